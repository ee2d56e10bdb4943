"""Service check implementations, one module per protocol family, used by collectors.services."""
