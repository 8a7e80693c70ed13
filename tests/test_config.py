from pathlib import Path

import pytest

from config import ConfigError, load_prompts, load_server

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_examples_are_valid():
    cfg = load_server(ROOT / "config" / "server.yaml")
    prompts = load_prompts(cfg.prompts_path())
    assert cfg.codecs == ["PCMU", "PCMA"]
    assert prompts.lookup("1000") is not None
    assert prompts.lookup("nope") == prompts.default


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_errors_name_file_line_and_field(tmp_path):
    p = write(tmp_path, "server.yaml", "sip:\n  listen: 127.0.0.1:5060\nrtp:\n  port_min: abc\n  bogus: 1\ncodecs: [G729]\n")
    with pytest.raises(ConfigError) as exc:
        load_server(p)
    lines = str(exc.value).splitlines()
    assert f"{p}:4: rtp.port_min: Input should be a valid integer" in lines[0]
    assert lines[1] == f"{p}:5: rtp.bogus: unknown field"
    assert lines[2].startswith(f"{p}:6: codecs.0: ")


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = write(tmp_path, "server.yaml", "sip:\n  listen: [unclosed\n")
    with pytest.raises(ConfigError) as exc:
        load_server(p)
    assert str(exc.value).startswith(f"{p}:")
    assert "YAML syntax" in str(exc.value)


def test_port_range_and_listen_checked(tmp_path):
    p = write(tmp_path, "s.yaml", "rtp:\n  port_min: 30000\n  port_max: 20000\nsip:\n  listen: not-an-ip:5060\n")
    with pytest.raises(ConfigError) as exc:
        load_server(p)
    text = str(exc.value)
    assert f"{p}:1: rtp: " in text and "port_max must be greater" in text
    assert f"{p}:5: sip.listen: " in text


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_server(tmp_path / "absent.yaml")


def test_prompts_short_and_long_forms(tmp_path):
    p = write(tmp_path, "p.yaml", 'routes:\n  "1": hello\n  "2":\n    text: world\n')
    prompts = load_prompts(p)
    assert prompts.lookup("1").say == "hello" and prompts.lookup("2").say == "world"
    assert prompts.lookup("3") is None


def test_blank_prompt_is_an_error_with_its_line(tmp_path):
    p = write(tmp_path, "p.yaml", 'routes:\n  "1": hello\n  "2":\n    text: "   "\n')
    with pytest.raises(ConfigError) as exc:
        load_prompts(p)
    assert f"{p}:4: routes.1.say: " in str(exc.value)


def test_unknown_engine_kind(tmp_path):
    p = write(tmp_path, "s.yaml", "engine:\n  kind: festival\n")
    with pytest.raises(ConfigError) as exc:
        load_server(p)
    assert f"{p}:2: engine.kind: " in str(exc.value)
