"""trunks: in server.yaml: a bad field is refused with file, line and field named."""

import pytest

from config import ConfigError, load_server


@pytest.mark.parametrize("field,value,message", [
    ("address", "0.0.0.0:5060", "needs a host"),
    ("transport", "SCTP", "UDP"),
    ("number_format", "'+{country}{digits}'", "{number} or {digits}"),
    ("outbound_proxy", "'http://proxy'", "outbound_proxy"),
    ("calls_per_second", "-1", "greater than or equal to 0"),
])
def test_bad_trunk_field_names_file_line_field(tmp_path, field, value, message):
    lines = ["trunks:", "  carrier:", "    address: 127.0.0.1:5070"]
    if field == "address":
        lines[2] = f"    address: {value}"
    else:
        lines.append(f"    {field}: {value}")
    path = tmp_path / "server.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_server(path)
    line = 3 if field == "address" else 4
    assert f"server.yaml:{line}: trunks.carrier.{field}: " in str(exc.value) and message in str(exc.value), str(exc.value)


def test_trunk_number_format(tmp_path):
    path = tmp_path / "server.yaml"
    path.write_text("trunks:\n  t:\n    address: pbx.example\n    number_format: '00{digits}'\n")
    assert load_server(path).trunks["t"].user_for("+4930123") == "004930123"
