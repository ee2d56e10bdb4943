"""Config loading: every error names file, line and key; human forms parse; secrets."""

import os
from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config, parse_config
from monitor.units import (
    format_bits_per_second,
    format_bytes,
    format_duration,
    parse_duration,
    parse_percent,
    parse_size,
)


def error_of(text: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.toml", **kwargs)
    return str(info.value)


def test_bad_port_names_file_line_and_key():
    text = """\
[agent]
interval = "5m"

[[snmp.devices]]
name = "dmz-router"
host = "192.0.2.1"

[[snmp.devices]]
name = "core-switch"
host = "192.0.2.2"
port = "abc"
"""
    assert error_of(text) == (
        'config.toml:11: snmp.devices[1].port: expected an integer 1-65535, got "abc"'
    )


def test_port_out_of_range():
    text = '[[snmp.devices]]\nname = "r"\nhost = "h"\nport = 70000\n'
    assert error_of(text) == "config.toml:4: snmp.devices[0].port: expected an integer 1-65535, got 70000"


def test_unknown_key_suggests_the_close_one():
    assert error_of('[agent]\nintervall = "5m"\n') == (
        'config.toml:2: agent.intervall: unknown key (did you mean "interval"?)'
    )


def test_unknown_section():
    assert error_of('[agnet]\ninterval = "5m"\n') == (
        'config.toml:1: agnet: unknown key (did you mean "agent"?)'
    )


def test_toml_syntax_error_has_line():
    message = error_of('[agent]\ninterval = "5m\n')
    assert message.startswith("config.toml:2: invalid TOML")


def test_bad_duration():
    assert error_of('[agent]\ninterval = "five minutes"\n') == (
        'config.toml:2: agent.interval: expected a duration like "90s", "5m" or "2h", '
        "got 'five minutes'"
    )


def test_bad_literal_with_suggestion():
    text = '[smtp]\nsecurity = "startls"\n'
    assert error_of(text) == (
        'config.toml:2: smtp.security: expected one of "none", "starttls", "tls", got "startls" '
        '(did you mean "starttls"?)'
    )


def test_missing_required_key_points_at_the_table():
    text = '[agent]\n\n[[services]]\nname = "web"\n'
    assert error_of(text) == 'config.toml:3: services[0]: missing required key "kind"'


def test_validate_hook_error_points_at_key():
    text = '[agent]\ninterval = "1m"\njitter = "2m"\n'
    assert error_of(text) == "config.toml:3: agent.jitter: must be shorter than the interval"


def test_wrong_type_for_table():
    assert error_of('agent = 5\n') == "config.toml:1: agent: expected a table, got 5"


def test_duplicate_service_names():
    svc = 'kind = "tcp"\nhost = "h"\nport = 1\n'
    text = f'[[services]]\nname = "a"\n{svc}[[services]]\nname = "a"\n{svc}'
    assert "two services are named 'a'" in error_of(text)


def test_a_ups_named_like_an_snmp_device_is_refused():
    """NUT and the SNMP collector (UPS-MIB, health = true) both write target NAME, instance
    "ups": one series and one "ups" check fed by two sources would mix their readings."""
    device = '[[snmp.devices]]\nname = "ups1"\nhost = "192.0.2.5"\ncommunity = "public"\n'
    error = error_of(f'{device}[[ups]]\nname = "ups1"\n')
    assert "ups" in error and "[[snmp.devices]] ups1" in error
    parse_config(f'{device}health = false\n[[ups]]\nname = "ups1"\n')  # no UPS read by SNMP


def test_dotted_keys_and_inline_tables_locate():
    text = 'agent.interval = 60\nsmtp = { port = "x" }\n'
    assert error_of(text) == 'config.toml:2: smtp.port: expected an integer 1-65535, got "x"'


def test_multiline_strings_do_not_confuse_line_numbers():
    text = '[web]\ntitle = """\nport = 1\n"""\n[smtp]\nport = "no"\n'
    assert error_of(text).startswith("config.toml:6: smtp.port:")


def test_human_forms():
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration("26h") == 93600
    assert parse_duration("1h30m") == 5400
    assert parse_duration(42) == 42
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5GiB") == 1610612736
    assert parse_percent("90%") == 90
    assert format_duration(5400) == "1h30m"
    for bad in ("", "5 parsecs", "m5", "-1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_percent("120%")
    with pytest.raises(ValueError):
        parse_size("2 bananas")


def test_defaults_and_relative_paths(tmp_path: Path):
    config = parse_config('[agent]\ndata_dir = "var"\n', base_dir=tmp_path)
    assert config.agent.data_dir == tmp_path / "var"
    assert config.rrd_dir == tmp_path / "var" / "rrd"
    assert config.html_dir == tmp_path / "var" / "html"
    assert config.agent.interval == 300
    assert config.storage.archives[:2] == ["step:2d", "5m:32d"]


def test_secret_from_file_and_env(tmp_path: Path):
    (tmp_path / "smtp.secret").write_text("s3cret\n")
    config = parse_config('[smtp]\npassword_file = "smtp.secret"\n', base_dir=tmp_path)
    assert config.smtp.password == "s3cret"
    config = parse_config('[smtp]\npassword_env = "SMTP_PW"\n', environ={"SMTP_PW": "pw"})
    assert config.smtp.password == "pw"
    assert error_of('[smtp]\npassword_env = "NOPE"\n', environ={}) == (
        "config.toml:2: smtp.password_env: environment variable NOPE is not set"
    )
    message = error_of('[smtp]\npassword_file = "missing"\n', base_dir=tmp_path)
    assert message.startswith("config.toml:2: smtp.password_file: cannot read secret file")
    assert "only one of" in error_of('[smtp]\npassword = "a"\npassword_env = "B"\n', environ={"B": "b"})


def test_inline_secret_warns_when_others_can_read(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text('[smtp]\nusername = "u"\npassword = "hunter2"\n')
    path.chmod(0o644)
    config = load_config(path)
    assert config.smtp.password == "hunter2"
    assert len(config.warnings) == 1
    assert ":3: smtp.password: inline secret" in config.warnings[0]
    path.chmod(0o600)
    assert load_config(path).warnings == []


def test_missing_file_says_what_to_do(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "--config" in str(info.value) and "MONITOR_CONFIG" in str(info.value)


def test_non_utf8_file(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_bytes(b'[web]\ntitle = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: not valid UTF-8"


def test_embedded_default_loads():
    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "config.toml", environ=dict(os.environ))
    assert config.agent.data_dir == root / "data"


def test_scaled_units_for_messages():
    assert format_bytes(10) == "10 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**50) == "3.0 PiB"  # as the digests say it
    assert format_bits_per_second(940) == "940 bit/s"
    assert format_bits_per_second(1_234_567) == "1.23 Mbit/s"
