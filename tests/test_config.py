"""Settings come from flags and STUDIO_* variables; a Space binds 0.0.0.0 and saves nothing."""
import pytest

from studio.config import DEFAULT_MODEL, Settings, parse_settings


def test_defaults_serve_the_bundled_model_on_loopback():
    settings = parse_settings([])
    assert (settings.model, settings.host, settings.port) == (DEFAULT_MODEL, "127.0.0.1", 7860)
    assert not settings.public and not settings.no_save


def test_every_documented_flag_is_accepted():
    settings = parse_settings([
        "--model", "m", "--device", "cpu", "--dtype", "bfloat16", "--attention-slicing", "max",
        "--vae-tiling", "--vae-slicing", "--cpu-offload", "--trust-pickle", "--host", "0.0.0.0",
        "--port", "9000", "--share", "--auth", "ann:secret", "--outputs", "/tmp/o", "--no-save",
        "--allowed-models", "a,b"])
    assert settings.auth_pair() == ("ann", "secret") and settings.allowed_models == ("a", "b")
    assert settings.vae_tiling and settings.cpu_offload and settings.trust_pickle and settings.public


def test_environment_variables_set_defaults_and_flags_win(monkeypatch):
    monkeypatch.setenv("STUDIO_PORT", "8123")
    monkeypatch.setenv("STUDIO_VAE_TILING", "true")
    monkeypatch.setenv("STUDIO_MODEL", "from-env")
    settings = parse_settings(["--model", "from-flag"])
    assert (settings.port, settings.vae_tiling, settings.model) == (8123, True, "from-flag")


def test_on_a_space_it_binds_all_interfaces_and_saves_nothing(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/studio")
    settings = parse_settings([])
    assert settings.host == "0.0.0.0" and settings.no_save and settings.public


@pytest.mark.parametrize("auth", ["nopassword", ":x", "user:"])
def test_a_malformed_auth_is_refused(auth):
    with pytest.raises(ValueError, match="user:password"):
        parse_settings(["--auth", auth])


def test_a_non_loopback_host_is_public():
    assert Settings(host="0.0.0.0").public and not Settings(host="127.0.0.1").public
