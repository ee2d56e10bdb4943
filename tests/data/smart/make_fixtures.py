"""Writes the smartctl --json fixtures of this folder (see README.md): `python make_fixtures.py`."""
import json
import pathlib

OUT = pathlib.Path(__file__).resolve().parent
LOCAL = {"time_t": 1795420800, "asctime": "Mon Nov 23 08:00:00 2026 UTC"}

def head(argv, status, messages=None, local=True):
    s = {"version": [7, 3], "svn_revision": "5338",
         "platform_info": "x86_64-linux-6.1.0-27-amd64", "build_info": "(local build)",
         "argv": argv}
    if messages:
        s["messages"] = [{"string": m, "severity": sev} for m, sev in messages]
    s["exit_status"] = status
    doc = {"json_format_version": [1, 0], "smartctl": s}
    if local:  # smartctl 7.3 sets local_time right at start-up, before opening the device
        doc["local_time"] = LOCAL
    return doc

def argv(dev, dtype=None):
    return ["smartctl", "--json", "-a", "-n", "standby", *(["-d", dtype] if dtype else []), dev]

def flags(v):
    s = ("P" if v & 1 else "-") + ("O" if v & 2 else "-") + ("S" if v & 4 else "-") + \
        ("R" if v & 8 else "-") + ("C" if v & 16 else "-") + ("K" if v & 32 else "-") + \
        ("+" if v & ~0x3f else " ")
    return {"value": v, "string": s, "prefailure": bool(v & 1), "updated_online": bool(v & 2),
            "performance": bool(v & 4), "error_rate": bool(v & 8), "event_count": bool(v & 16),
            "auto_keep": bool(v & 32)}

def attr(i, name, fl, value, worst, thresh, raw, when="", rawstr=None):
    return {"id": i, "name": name, "value": value, "worst": worst, "thresh": thresh,
            "when_failed": when, "flags": flags(fl),
            "raw": {"value": raw, "string": rawstr if rawstr is not None else str(raw)}}

def ata_doc(dev, status, model_family, model, serial, fw, capacity, rpm, passed, attrs, hours,
            cycles, temp, err_count, selftests, offline_status=(0, "was never started"),
            selftest_status=(0, "completed without error", True), messages=None):
    d = head(argv(dev), status, messages)
    d["device"] = {"name": dev, "info_name": f"{dev} [SAT]", "type": "sat", "protocol": "ATA"}
    d["model_family"] = model_family
    d["model_name"] = model
    d["serial_number"] = serial
    d["wwn"] = {"naa": 5, "oui": 5358, "id": 52353847303}
    d["firmware_version"] = fw
    d["user_capacity"] = {"blocks": capacity // 512, "bytes": capacity}
    d["logical_block_size"] = 512
    d["physical_block_size"] = 4096
    d["rotation_rate"] = rpm
    d["form_factor"] = {"ata_value": 2, "name": "3.5 inches"}
    d["trim"] = {"supported": False}
    d["in_smartctl_database"] = True
    d["ata_version"] = {"string": "ACS-3 T13/2161-D revision 5", "major_value": 2046, "minor_value": 109}
    d["sata_version"] = {"string": "SATA 3.1", "value": 127}
    d["interface_speed"] = {
        "max": {"sata_value": 14, "string": "6.0 Gb/s", "units_per_second": 60,
                "bits_per_unit": 100000000},
        "current": {"sata_value": 3, "string": "6.0 Gb/s", "units_per_second": 60,
                    "bits_per_unit": 100000000}}
    d["smart_support"] = {"available": True, "enabled": True}
    d["smart_status"] = {"passed": passed}
    st = {"value": selftest_status[0], "string": selftest_status[1]}
    if selftest_status[2] is not None:
        st["passed"] = selftest_status[2]
    d["ata_smart_data"] = {
        "offline_data_collection": {"status": {"value": offline_status[0], "string": offline_status[1]},
                                    "completion_seconds": 6060},
        "self_test": {"status": st, "polling_minutes": {"short": 2, "extended": 452, "conveyance": 5}},
        "capabilities": {"values": [123, 3], "exec_offline_immediate_supported": True,
                         "offline_is_aborted_upon_new_cmd": False, "offline_surface_scan_supported": True,
                         "self_tests_supported": True, "conveyance_self_test_supported": True,
                         "selective_self_test_supported": True, "attribute_autosave_enabled": True,
                         "error_logging_supported": True, "gp_logging_supported": True}}
    d["ata_sct_capabilities"] = {"value": 12341, "error_recovery_control_supported": True,
                                 "feature_control_supported": True, "data_table_supported": True}
    d["ata_smart_attributes"] = {"revision": 16, "table": attrs}
    d["power_on_time"] = {"hours": hours}
    d["power_cycle_count"] = cycles
    d["temperature"] = {"current": temp}
    d["ata_smart_error_log"] = {"summary": {"revision": 1, "count": err_count}}
    if err_count:
        d["ata_smart_error_log"]["summary"]["logged_count"] = min(err_count, 5)
    tests = {"revision": 1, "table": selftests, "count": len(selftests)}
    bad = sum(1 for t in selftests if t["status"].get("passed") is False)
    tests["error_count_total"] = bad
    tests["error_count_outdated"] = 0
    d["ata_smart_self_test_log"] = {"standard": tests}
    d["ata_smart_selective_self_test_log"] = {
        "revision": 1,
        "table": [{"lba_min": 0, "lba_max": 0, "status": {"value": 0, "string": "Not_testing"}}
                  for _ in range(5)],
        "flags": {"value": 0, "remainder_scan_enabled": False}, "power_up_scan_resume_minutes": 0}
    return d

def test(kind, status_value, status_string, passed, hours, lba=None):
    t = {"type": {"value": {"Short offline": 1, "Extended offline": 2}[kind], "string": kind},
         "status": {"value": status_value, "string": status_string},
         "lifetime_hours": hours}
    if passed is not None:
        t["status"]["passed"] = passed
    if status_value >> 4 == 7 or status_value >> 4 == 8 or (status_value & 0xf0) == 0x70:
        t["status"]["remaining_percent"] = 90
    if lba is not None:
        t["lba"] = lba
    return t

def wd_attrs(realloc=0, pending=0, uncorr=0, temp=34, hours=43210, mz=0, realloc_value=200, events=0):
    return [
        attr(1, "Raw_Read_Error_Rate", 0x2f, 200, 200, 51, 0),
        attr(3, "Spin_Up_Time", 0x27, 180, 176, 21, 5975),
        attr(4, "Start_Stop_Count", 0x32, 100, 100, 0, 84),
        attr(5, "Reallocated_Sector_Ct", 0x33, realloc_value, realloc_value, 140, realloc),
        attr(7, "Seek_Error_Rate", 0x2e, 200, 200, 0, 0),
        attr(9, "Power_On_Hours", 0x32, 41, 41, 0, hours),
        attr(10, "Spin_Retry_Count", 0x32, 100, 253, 0, 0),
        attr(11, "Calibration_Retry_Count", 0x32, 100, 253, 0, 0),
        attr(12, "Power_Cycle_Count", 0x32, 100, 100, 0, 84),
        attr(192, "Power-Off_Retract_Count", 0x32, 200, 200, 0, 52),
        attr(193, "Load_Cycle_Count", 0x32, 200, 200, 0, 1245),
        attr(194, "Temperature_Celsius", 0x22, 116 - (temp - 34), 103, 0, temp),
        attr(196, "Reallocated_Event_Count", 0x32, 200 - events, 200 - events, 0, events),
        attr(197, "Current_Pending_Sector", 0x32, 200, 200, 0, pending),
        attr(198, "Offline_Uncorrectable", 0x30, 200 if uncorr else 100, 200 if uncorr else 253, 0,
             uncorr),
        attr(199, "UDMA_CRC_Error_Count", 0x32, 200, 200, 0, 0),
        attr(200, "Multi_Zone_Error_Rate", 0x08, 100 if not mz else 200, 253 if not mz else 200, 0, mz),
    ]

def write(name, doc):
    (OUT / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

# 1. healthy WD Red
write("ata_healthy.json", ata_doc(
    "/dev/sda", 0, "Western Digital Red", "WDC WD40EFRX-68N32N0", "WD-WCC7K4NJ0001", "82.00A82",
    4000787030016, 5400, True, wd_attrs(), 43210, 84, 34, 0,
    [test("Short offline", 0, "Completed without error", True, 43190),
     test("Extended offline", 0, "Completed without error", True, 42700)]))

# 2. pre-fail: same family, health still PASSED, growing defects, errors logged (exit 0xc0 = 192)
write("ata_prefail.json", ata_doc(
    "/dev/sdb", 192, "Western Digital Red", "WDC WD40EFRX-68N32N0", "WD-WCC7K4NJ0002", "82.00A82",
    4000787030016, 5400, True,
    wd_attrs(realloc=48, pending=8, uncorr=8, temp=41, hours=51877, mz=12, realloc_value=199, events=48),
    51877, 97, 41, 23,
    [test("Extended offline", 0x79, "Completed: read failure", False, 51850, 2318391424),
     test("Short offline", 0, "Completed without error", True, 51700)],
    selftest_status=(121, "completed: read failure", False)))

# 3. failing Seagate: health FAILED, Reallocated_Sector_Ct below threshold now (exit 8|16|64|128)
seagate = [
    attr(1, "Raw_Read_Error_Rate", 0x0f, 103, 82, 6, 215431320),
    attr(3, "Spin_Up_Time", 0x03, 92, 91, 0, 0),
    attr(4, "Start_Stop_Count", 0x32, 99, 99, 20, 1211),
    attr(5, "Reallocated_Sector_Ct", 0x33, 5, 5, 10, 3920, "now"),
    attr(7, "Seek_Error_Rate", 0x0f, 80, 60, 30, 111893582),
    attr(9, "Power_On_Hours", 0x32, 66, 66, 0, 30125),
    attr(10, "Spin_Retry_Count", 0x13, 100, 100, 97, 0),
    attr(12, "Power_Cycle_Count", 0x32, 99, 99, 20, 1207),
    attr(183, "Runtime_Bad_Block", 0x32, 98, 98, 0, 2),
    attr(184, "End-to-End_Error", 0x32, 100, 100, 99, 0),
    attr(187, "Reported_Uncorrect", 0x32, 1, 1, 0, 412),
    attr(188, "Command_Timeout", 0x32, 100, 99, 0, 4295032833, rawstr="1 1 1"),
    attr(189, "High_Fly_Writes", 0x3a, 100, 100, 0, 0),
    attr(190, "Airflow_Temperature_Cel", 0x22, 62, 48, 45, 38, "past", rawstr="38 (Min/Max 21/52)"),
    attr(191, "G-Sense_Error_Rate", 0x32, 100, 100, 0, 0),
    attr(192, "Power-Off_Retract_Count", 0x32, 100, 100, 0, 0),
    attr(193, "Load_Cycle_Count", 0x32, 74, 74, 0, 52712),
    attr(194, "Temperature_Celsius", 0x22, 38, 52, 0, 68719476774, rawstr="38 (0 16 0 0 0)"),
    attr(197, "Current_Pending_Sector", 0x12, 88, 88, 0, 1024),
    attr(198, "Offline_Uncorrectable", 0x10, 88, 88, 0, 1024),
    attr(199, "UDMA_CRC_Error_Count", 0x3e, 200, 200, 0, 0),
    attr(240, "Head_Flying_Hours", 0x00, 100, 253, 0, 25766),
    attr(241, "Total_LBAs_Written", 0x00, 100, 253, 0, 28137762418),
    attr(242, "Total_LBAs_Read", 0x00, 100, 253, 0, 145723183027),
]
doc = ata_doc(
    "/dev/sdc", 8 | 16 | 32 | 64 | 128, "Seagate Barracuda 7200.14 (AF)", "ST3000DM001-1CH166",
    "Z1F2ABCD", "CC27", 3000592982016, 7200, False, seagate, 30125, 1207, 38, 1542,
    [test("Short offline", 0x74, "Completed: read failure", False, 30120, 1861212456),
     test("Short offline", 0, "Completed without error", True, 29500)],
    offline_status=(130, "was completed without error"),
    selftest_status=(116, "completed: read failure", False))
doc["device"]["info_name"] = "/dev/sdc [SAT]"
write("ata_failing.json", doc)

# 4/5. NVMe
def nvme_doc(dev, status, warning, temp, used, media, spare, hours, errlog):
    d = head(argv(dev), status)
    d["device"] = {"name": dev, "info_name": dev, "type": "nvme", "protocol": "NVMe"}
    d["model_name"] = "Samsung SSD 970 EVO Plus 500GB"
    d["serial_number"] = "S4EVNX0R123456" if not warning else "S4EVNX0R654321"
    d["firmware_version"] = "2B2QEXM7"
    d["nvme_pci_vendor"] = {"id": 5197, "subsystem_id": 5197}
    d["nvme_ieee_oui_identifier"] = 9528
    d["nvme_total_capacity"] = 500107862016
    d["nvme_unallocated_capacity"] = 0
    d["nvme_controller_id"] = 4
    d["nvme_version"] = {"string": "1.3", "value": 66304}
    d["nvme_number_of_namespaces"] = 1
    blocks = 976773168
    cap = {"blocks": blocks, "bytes": blocks * 512}
    d["nvme_namespaces"] = [{"id": 1, "size": cap, "capacity": cap,
                             "utilization": {"blocks": 412345678, "bytes": 412345678 * 512},
                             "formatted_lba_size": 512, "eui64": {"oui": 9528, "ext_id": 382252617524}}]
    d["user_capacity"] = cap
    d["logical_block_size"] = 512
    d["smart_support"] = {"available": True, "enabled": True}
    ss = {"passed": not warning, "nvme": {"value": warning}}
    if warning:
        ss["nvme"].update({
            "spare_below_threshold": bool(warning & 1),
            "temperature_above_or_below_threshold": bool(warning & 2),
            "reliability_degraded": bool(warning & 4), "media_read_only": bool(warning & 8),
            "volatile_memory_backup_failed": bool(warning & 16),
            "persistent_memory_region_unreliable": bool(warning & 32), "other": warning & ~0x3f})
    d["smart_status"] = ss
    d["nvme_smart_health_information_log"] = {
        "critical_warning": warning, "temperature": temp, "available_spare": spare,
        "available_spare_threshold": 10, "percentage_used": used,
        "data_units_read": 41235711, "data_units_written": 61233410,
        "host_reads": 512377162, "host_writes": 1011234570, "controller_busy_time": 2731,
        "power_cycles": 1234, "power_on_hours": hours, "unsafe_shutdowns": 87,
        "media_errors": media, "num_err_log_entries": errlog, "warning_temp_time": 0,
        "critical_comp_time": 0, "temperature_sensors": [temp, temp + 6]}
    d["temperature"] = {"current": temp}
    d["power_cycle_count"] = 1234
    d["power_on_time"] = {"hours": hours}
    return d

write("nvme_healthy.json", nvme_doc("/dev/nvme0", 0, 0, 38, 1, 0, 100, 8123, 0))
write("nvme_critical.json", nvme_doc("/dev/nvme1", 8, 0x05, 49, 97, 61, 4, 36812, 1184))

# 6. drive in standby: skipped, not woken (exit 2, "information" message, no SMART data)
d = head(argv("/dev/sdd"), 2, [("Device is in STANDBY mode, exit(2)", "information")])
d["device"] = {"name": "/dev/sdd", "info_name": "/dev/sdd [SAT]", "type": "sat", "protocol": "ATA"}
write("ata_standby.json", d)

# 7. not root: open fails (exit 2, "error" message)
write("permission_denied.json", head(argv("/dev/sda"), 2, [
    ("Smartctl open device: /dev/sda failed: Permission denied", "error")]))

# 8. --scan-open output with two disks
d = head(["smartctl", "--scan-open", "--json"], 0, local=False)
d["devices"] = [
    {"name": "/dev/sda", "info_name": "/dev/sda [SAT]", "type": "sat", "protocol": "ATA"},
    {"name": "/dev/nvme0", "info_name": "/dev/nvme0", "type": "nvme", "protocol": "NVMe"}]
write("scan_open.json", d)
d = head(["smartctl", "--scan-open", "--json"], 0, local=False)
d["devices"] = [
    {"name": "/dev/sda", "info_name": "/dev/sda", "type": "scsi", "protocol": "SCSI",
     "open_error": "Permission denied"}]
write("scan_open_denied.json", d)

# 9. NVMe with media errors that no longer grow, no critical warning: exit 0
write("nvme_media_errors.json", nvme_doc("/dev/nvme2", 0, 0, 41, 12, 3, 100, 20111, 0))

# 10. SAS disk (smartctl -a on SCSI): health OK, no grown defects, but uncorrected read errors
d = head(argv("/dev/sde"), 0)
d["device"] = {"name": "/dev/sde", "info_name": "/dev/sde", "type": "scsi", "protocol": "SCSI"}
d["scsi_vendor"] = "SEAGATE"
d["scsi_product"] = "ST4000NM0023"
d["scsi_model_name"] = "SEAGATE ST4000NM0023"
d["scsi_revision"] = "GS0F"
d["scsi_version"] = "SPC-4"
d["user_capacity"] = {"blocks": 7814037168, "bytes": 4000787030016}
d["logical_block_size"] = 512
d["rotation_rate"] = 7200
d["form_factor"] = {"scsi_value": 2, "name": "3.5 inches"}
d["serial_number"] = "Z1Z0ABCD0000C4321XYZ"
d["device_type"] = {"scsi_value": 0, "name": "disk"}
d["local_time"] = LOCAL
d["smart_support"] = {"available": True, "enabled": True}
d["temperature_warning"] = {"enabled": True}
d["smart_status"] = {"passed": True}
d["temperature"] = {"current": 31, "drive_trip": 68}
d["power_on_time"] = {"hours": 51234, "minutes": 12}
d["scsi_grown_defect_list"] = 0
counters = {"errors_corrected_by_eccfast": 0, "errors_corrected_by_eccdelayed": 0,
            "errors_corrected_by_rereads_rewrites": 0, "total_errors_corrected": 0,
            "correction_algorithm_invocations": 0, "gigabytes_processed": "0.000",
            "total_uncorrected_errors": 0}
d["scsi_error_counter_log"] = {
    "read": {**counters, "errors_corrected_by_eccfast": 1843211, "errors_corrected_by_eccdelayed": 12,
             "total_errors_corrected": 1843223, "correction_algorithm_invocations": 1843223,
             "gigabytes_processed": "512034.771", "total_uncorrected_errors": 2},
    "write": {**counters, "gigabytes_processed": "301234.025"},
    "verify": {**counters, "errors_corrected_by_eccfast": 5, "total_errors_corrected": 5,
               "correction_algorithm_invocations": 5, "gigabytes_processed": "1234.567"}}
write("sas_uncorrected.json", d)
