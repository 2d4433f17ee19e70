"""Import hygiene for a small footprint (see docs/node-engine.md, "Footprint").

The engine runs on devices with little memory, and Python + pydantic + paho + psutil
already costs most of the 40 MB budget. Four measures, each reversible and each only
taken when nothing needs what it leaves out:

* OpenSSL's libcrypto (~4 MB RSS) is kept out of the process when neither the join URL
  nor the broker nor the Docker endpoint uses TLS (the docker runtime's client,
  `node_engine.runtimes.docker_api`, imports ``ssl`` only for a TLS endpoint):
  ``_hashlib`` is hidden (``hashlib``/``hmac`` then use Python's builtin
  implementations, which the engine never needs anyway) and ``_ssl`` is hidden (so
  ``urllib`` offers no HTTPS and paho no TLS). `allow_tls()` undoes it before paho is
  imported when a join response asks for TLS.
* pydantic-settings imports ``asyncio`` only for its CLI app runner, which the engine
  does not use; `import_pydantic_settings()` imports it with a placeholder ``asyncio``
  (falling back to a normal import if that ever fails), saving ~1.6 MB.
* paho imports dnspython (``dns.resolver``, ~3 MB RSS with ``idna``) when it is
  installed (pymongo, a dependency of the orchestrators, installs it), only for
  ``connect_srv()``, which the engine never calls; `import_paho_client()` imports paho
  with ``dns`` hidden (paho then reports no DNS support), nothing else is affected.
* paho 2.x evaluates ``except ssl.SSLWantReadError`` on every socket error, which
  raises ``AttributeError`` when ``ssl`` is unavailable; `patch_paho_without_ssl()` gives
  paho inert exception classes instead (only when paho found no ``ssl``).
"""

from __future__ import annotations

import sys
import types
from typing import Any

_HIDDEN = ("_hashlib", "_ssl")


def hide_openssl() -> bool:
    """Hide ``_hashlib`` and ``_ssl`` unless already imported; True if both are hidden now."""
    if any(name in sys.modules and sys.modules[name] is not None for name in _HIDDEN):
        return False
    for name in _HIDDEN:
        sys.modules[name] = None  # type: ignore[assignment]
    return True


def openssl_hidden() -> bool:
    """Whether `hide_openssl()` is in effect."""
    return "_ssl" in sys.modules and sys.modules["_ssl"] is None


def allow_tls() -> None:
    """Undo `hide_openssl()` so ``import ssl`` works (call before importing paho)."""
    for name in _HIDDEN:
        if name in sys.modules and sys.modules[name] is None:
            del sys.modules[name]


def import_pydantic_settings() -> Any:
    """Import pydantic_settings without pulling in asyncio (unused by the engine)."""
    if "pydantic_settings" in sys.modules or "asyncio" in sys.modules:
        import pydantic_settings

        return pydantic_settings
    placeholder = types.ModuleType("asyncio")
    sys.modules["asyncio"] = placeholder
    try:
        import pydantic_settings
    except Exception:  # a future version needs asyncio at import: import it normally
        del sys.modules["asyncio"]
        for name in [n for n in sys.modules if n.startswith("pydantic_settings")]:
            del sys.modules[name]
        import pydantic_settings
    finally:
        if sys.modules.get("asyncio") is placeholder:
            del sys.modules["asyncio"]
    return pydantic_settings


def import_paho_client() -> Any:
    """Import ``paho.mqtt.client`` without dnspython (see the module docstring)."""
    if "paho.mqtt.client" in sys.modules or "dns" in sys.modules:
        import paho.mqtt.client

        return paho.mqtt.client
    hidden = ("dns", "dns.resolver")
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import paho.mqtt.client
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return paho.mqtt.client


class _NeverRaised(Exception):
    """Stands in for ssl exceptions that cannot occur on a plain TCP socket."""


def patch_paho_without_ssl(paho_client_module: Any) -> None:
    """Give paho inert ssl exception classes when it imported without ``ssl``."""
    if getattr(paho_client_module, "ssl", True) is None:
        paho_client_module.ssl = types.SimpleNamespace(
            SSLWantReadError=_NeverRaised,
            SSLWantWriteError=_NeverRaised,
            CertificateError=_NeverRaised,
            SSLError=_NeverRaised,
        )
