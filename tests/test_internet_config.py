"""The internet-facing settings in server.yaml: errors name file, line and field; defaults as documented."""

import pytest

from config import ConfigError, load_server
from sip_tts.internet import build_authenticator, tls_settings


def test_defaults_and_wiring(tmp_path):
    p = tmp_path / "server.yaml"
    p.write_text("auth:\n  users: {pbx: s3cret}\nsip:\n  tls:\n    cert_file: tls/c.pem\n    key_file: /abs/k.pem\n")
    cfg = load_server(p)
    assert cfg.media.srtp == "optional"
    assert (cfg.auth.max_failures, cfg.auth.failure_window_s, cfg.auth.lockout_s, cfg.auth.lockout_response) == \
        (10, 300, 900, "403")
    auth = build_authenticator(cfg.auth)
    assert auth.lockout is not None and auth.lockout.policy.max_failures == 10 and not auth.lockout_silent
    tls = tls_settings(cfg.sip.tls, cfg.source)
    assert (tls.host, tls.port) == ("0.0.0.0", 5061)
    assert tls.cert_file == str(tmp_path / "tls" / "c.pem") and tls.key_file == "/abs/k.pem"  # relative to the file


@pytest.mark.parametrize("text,where", [
    ("media:\n  srtp: maybe\n", ":2: media.srtp"),
    ("sip:\n  tls:\n    cert_file: c.pem\n    key_file: k.pem\n    verify_client: true\n", "verify_client needs ca_file"),
    ("sip:\n  tls:\n    listen: example.com:5061\n    cert_file: c.pem\n    key_file: k.pem\n", ":3: sip.tls.listen"),
    ("auth:\n  users: {a: b}\n  lockout_response: maybe\n", ":3: auth.lockout_response"),
    ("auth:\n  users: {a: b}\n  max_failures: 0\n", ":3: auth.max_failures"),
])
def test_errors_name_the_field(tmp_path, text, where):
    p = tmp_path / "server.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_server(p)
    assert where in str(exc.value), str(exc.value)


def test_app_server_settings_carry_lockout_srtp_and_tls(tmp_path):
    """sip_tts/app.py's server_settings hands the server what server.yaml says (not the old cli.serve)."""
    from sip_tts.app import server_settings

    p = tmp_path / "server.yaml"
    p.write_text("auth:\n  users: {pbx: s3cret}\n  max_failures: 3\n  lockout_response: silent\n"
                 "media:\n  srtp: required\nsip:\n  tls:\n    listen: '[::]:5061'\n    cert_file: c.pem\n"
                 "    key_file: k.pem\n")
    cfg = load_server(p)
    s = server_settings(cfg, "::", 5060, (20000, 20100), "espeak")
    assert s.calls.srtp == "required"
    assert s.authenticator is not None and s.authenticator.lockout.policy.max_failures == 3
    assert s.authenticator.lockout_silent
    assert (s.tls.host, s.tls.port, s.tls.cert_file) == ("::", 5061, str(tmp_path / "c.pem"))
