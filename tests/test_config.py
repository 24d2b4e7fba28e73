"""Configuration: defaults from init, env overrides, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.config import DEFAULT_CONFIG_TEMPLATE, ConfigError, load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dicomvault.toml"
    path.write_text(text)
    return path


def test_template_gives_the_documented_defaults(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, DEFAULT_CONFIG_TEMPLATE))
    assert settings.dicom.ae_title == "DICOMVAULT"
    assert settings.dicom.port == 11112
    assert settings.http.port == 8080
    assert settings.catalog_url == f"sqlite:///{tmp_path.resolve() / 'catalog.sqlite3'}"
    assert settings.primary_site_url == f"file://{tmp_path.resolve() / 'objects'}"


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMVAULT_DICOM_PORT", "10104")
    monkeypatch.setenv("DICOMVAULT_DICOM_ALLOWED_CALLING_AETS", "PACS1, PACS2")
    settings = load_settings(_write(tmp_path, DEFAULT_CONFIG_TEMPLATE))
    assert settings.dicom.port == 10104
    assert settings.dicom.allowed_calling_aets == ("PACS1", "PACS2")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[dicom]\nport = 'abc'\n", "must be an integer"),
        ("[dicom]\nae_titel = 'X'\n", "unknown key"),
        ("[dicom]\nae_title = 'THIS_TITLE_IS_FAR_TOO_LONG'\n", "1-16 characters"),
        ("[dicom\n", "not valid TOML"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path, text))


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dicomvault init"):
        load_settings(tmp_path / "absent.toml")
