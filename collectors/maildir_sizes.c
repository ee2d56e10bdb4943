/* One Maildir cur/ or new/ directory's message bytes and count, for collectors/mailboxes.py.
 *
 * The same work as its pure-Python fallback (_sizes_of_listing there) and the same system
 * calls as `du`: one readdir() pass, the size from ",S=<digits>" in the name, else an
 * fstatat() relative to the directory. Called through ctypes, which releases the GIL for the
 * whole directory: no Python object per message, and the scan threads run in parallel.
 * Built by `make deps` (cc -O2 -shared -fPIC); without it the Python code does the same.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { FOUND = 1, NOT_FOUND = 0, ASK_PYTHON = -1 };

/* The size in a name like "1700000000.M1P2.host,S=2345,W=2401:2,S": the first ",S=" followed
 * by a digit, as the Python regex ",S=(\d+)" finds it. A non-ASCII byte after ",S=" (a Unicode
 * digit for Python's \d?) or an absurd number: ASK_PYTHON, which decides exactly. */
static int size_in_name(const char *name, uint64_t *size)
{
    const char *p = name;
    while ((p = strstr(p, ",S=")) != NULL) {
        p += 3;
        if ((unsigned char)*p >= 0x80)
            return ASK_PYTHON;
        if (*p < '0' || *p > '9')
            continue;
        uint64_t value = 0;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (value > UINT64_MAX / 16)
                return ASK_PYTHON;
            value = value * 10 + (uint64_t)(*p - '0');
        }
        if ((unsigned char)*p >= 0x80)
            return ASK_PYTHON;
        *size = value;
        return FOUND;
    }
    return NOT_FOUND;
}

/* 0: *bytes, *files and *stat_needed are set; 1: let Python measure this directory;
 * -errno: the directory cannot be opened, listed, or an entry cannot be stat()ed (one that
 * vanished between the listing and its stat() is not counted, not an error). */
int maildir_sizes(const char *path, uint64_t *bytes, uint64_t *files, int *stat_needed)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        int err = errno;
        close(fd);
        return -err;
    }
    uint64_t total = 0, count = 0;
    int needed = 0, rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *entry = readdir(dir);
        if (entry == NULL) {
            rc = errno ? -errno : 0;
            break;
        }
        if (entry->d_name[0] == '.')
            continue;
        uint64_t size = 0;
        int found = size_in_name(entry->d_name, &size);
        if (found == ASK_PYTHON) {
            rc = 1;
            break;
        }
        if (found == NOT_FOUND) {
            struct stat st;
            needed = 1;
            if (fstatat(fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
                if (errno == ENOENT)
                    continue;
                rc = -errno;
                break;
            }
            size = (uint64_t)st.st_size;
        }
        if (__builtin_add_overflow(total, size, &total)) {
            rc = 1;
            break;
        }
        count++;
    }
    closedir(dir);
    if (rc == 0) {
        *bytes = total;
        *files = count;
        *stat_needed = needed;
    }
    return rc;
}
