"""Where the client finds its server and key: arguments, then ``GRFT_API_URL`` / ``GRFT_API_KEY``, then
a profile of the config file (``$GRFT_CONFIG``, else ``$XDG_CONFIG_HOME/grft/config.toml``, else
``~/.config/grft/config.toml``).

The file holds one table per profile; ``default`` is used unless ``profile=`` or ``GRFT_PROFILE`` names
another::

    [default]
    api_url = "https://grft.example.com"
    api_key = "grft-..."

    [staging]
    api_url = "http://127.0.0.1:8000"

It holds a secret, so it is written with mode 0600 (and its folder 0700 when created here).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from grft_client._errors import ConfigurationError

DEFAULT_PROFILE = "default"
URL_ENV, KEY_ENV, PROFILE_ENV, CONFIG_ENV = "GRFT_API_URL", "GRFT_API_KEY", "GRFT_PROFILE", "GRFT_CONFIG"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ClientConfig:
    """A resolved configuration: the server's root URL (no ``/v1``), the key, and where they came from."""

    api_url: str
    api_key: str | None
    profile: str
    source: str  # "arguments", "environment", or the config file's path


def config_path() -> Path:
    """The config file this process reads and ``grft login`` writes."""
    if explicit := os.environ.get(CONFIG_ENV):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "grft" / "config.toml"


def normalize_url(url: str) -> str:
    """``http://host:8000/v1/`` → ``http://host:8000``; anything but an http(s) URL is refused."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"api_url must be an http:// or https:// URL (got {url!r})")
    return url.removesuffix("/v1")


def check_profile_name(profile: str) -> str:
    if not _PROFILE_NAME.match(profile):
        raise ConfigurationError(f"profile names take 1-64 letters, digits, '-' or '_' (got {profile!r})")
    return profile


def read_profiles(path: Path | None = None) -> dict[str, dict[str, str]]:
    """Every profile of the config file (none when it does not exist)."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read the config file {path}: {exc}") from exc
    profiles: dict[str, dict[str, str]] = {}
    for name, table in data.items():
        if isinstance(table, dict):
            profiles[name] = {k: v for k, v in table.items() if isinstance(v, str)}
    return profiles


def resolve(
    api_url: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    path: Path | None = None,
) -> ClientConfig:
    """The configuration to use: each value from the first of arguments, environment, config file.

    ``api_key=""`` means "no key" (a server run with ``--no-auth``); the file is read only when the
    arguments and the environment leave something unset."""
    name = check_profile_name(profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE)
    path = path or config_path()
    env_url, env_key = os.environ.get(URL_ENV) or None, os.environ.get(KEY_ENV) or None
    url, url_from = (api_url, "arguments") if api_url else (env_url, "environment")
    key, key_from = (api_key, "arguments") if api_key is not None else (env_key, "environment")
    if url is None or key is None:
        stored = read_profiles(path)
        if name != DEFAULT_PROFILE and name not in stored:
            raise ConfigurationError(f"no profile {name!r} in {path} (run 'grft login --profile {name}')")
        table = stored.get(name, {})
        if url is None and "api_url" in table:
            url, url_from = table["api_url"], str(path)
        if key is None and "api_key" in table:
            key, key_from = table["api_key"], str(path)
    if not url:
        raise ConfigurationError(
            f"no API URL: pass api_url, set {URL_ENV}, or run 'grft login --url URL' (writes {path})"
        )
    sources = [url_from] if key is None or key_from == url_from else [url_from, key_from]
    return ClientConfig(normalize_url(url), key or None, name, " + ".join(sources))


def _toml_string(value: str) -> str:
    # JSON's string escapes are valid TOML basic-string escapes for everything json.dumps emits.
    return json.dumps(value, ensure_ascii=False)


def save_profile(profile: str, api_url: str, api_key: str | None, path: Path | None = None) -> Path:
    """Write (or replace) one profile, keeping the others; the file is 0600 from its first byte."""
    check_profile_name(profile)
    path = path or config_path()
    profiles = read_profiles(path)
    entry = {"api_url": normalize_url(api_url)}
    if api_key:
        entry["api_key"] = api_key
    profiles[profile] = entry
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    lines: list[str] = []
    for name in sorted(profiles, key=lambda n: (n != DEFAULT_PROFILE, n)):
        lines.append(f"[{name}]" if _PROFILE_NAME.match(name) else f"[{_toml_string(name)}]")
        lines += [f"{k} = {_toml_string(v)}" for k, v in sorted(profiles[name].items())]
        lines.append("")
    # A temporary file created 0600 and renamed over the old one: no moment where the key is readable.
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
