"""Where a real API server is and how to authenticate to it.

Resolution is left to the `kubernetes` package's own loaders (kubeconfig merging, exec and
auth-provider plugins, in-cluster service-account files), so we accept exactly what kubectl
and the official client accept. What we keep is the result: a server URL, TLS material for
an `ssl.SSLContext`, and an Authorization header value that can be refreshed when a token
may have expired (exec plugin expiry, rotated in-cluster token files) or was refused (401).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

#: Ask the loader's refresh hook (cheap unless the token really expired) at most this often.
_RECHECK_SECONDS = 10.0
SERVICE_NAMESPACE_FILENAME = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubeConfigError(Exception):
    """The kubeconfig or in-cluster environment does not describe a usable cluster."""


@dataclass
class KubeConnection:
    """A resolved connection: server, TLS files, and a refreshable Authorization header."""

    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_ssl: bool = True
    tls_server_name: str | None = None
    proxy: str | None = None
    #: The context's default namespace ("default" when it names none).
    namespace: str = "default"
    #: The kubeconfig context this came from (None for in-cluster or hand-built connections).
    context: str | None = None
    #: The official client's configuration: holds the token and the loader's refresh hook.
    configuration: Configuration | None = field(default=None, repr=False)
    #: Re-run the loader into `configuration` (blocking: may run an exec plugin).
    reload: Callable[[Configuration], None] | None = field(default=None, repr=False)
    _checked_at: float = field(default=0.0, repr=False, init=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False, init=False)

    @classmethod
    def for_server(
        cls, server: str, *, token: str | None = None, ca_file: str | None = None,
        verify_ssl: bool = True,
    ) -> KubeConnection:
        """A fixed connection (tests, `up`): a server URL and an optional static bearer token."""
        configuration = Configuration()
        if token:
            configuration.api_key["BearerToken"] = f"Bearer {token}"
        return cls(server=server.rstrip("/"), ca_file=ca_file, verify_ssl=verify_ssl,
                   configuration=configuration)

    # -- TLS -------------------------------------------------------------------------------

    @property
    def tls_identity(self) -> tuple[Any, ...]:
        """What the SSL context is built from; a change (exec plugin certs) needs a new one."""
        return (self.ca_file, self.cert_file, self.key_file, self.verify_ssl)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context for https servers (None for plain http)."""
        if not self.server.startswith("https"):
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    # -- authentication ------------------------------------------------------------------

    async def authorization(self) -> str | None:
        """The Authorization header value, refreshed through the loader when it may expire."""
        if self.configuration is None:
            return None
        if self.configuration.refresh_api_key_hook is not None:
            now = time.monotonic()
            if now - self._checked_at >= _RECHECK_SECONDS:
                async with self._get_lock():
                    if now - self._checked_at >= _RECHECK_SECONDS:
                        # The hook re-runs an exec plugin only past its expiry; a thread
                        # keeps that subprocess (or a token file read) off the event loop.
                        await asyncio.to_thread(self.configuration.refresh_api_key_hook,
                                                self.configuration)
                        self._sync_from_configuration()
                        self._checked_at = time.monotonic()
        return self._header()

    async def refresh(self) -> bool:
        """Force a reload after a 401; True when credentials could have changed."""
        if self.reload is None or self.configuration is None:
            return False
        async with self._get_lock():
            await asyncio.to_thread(self.reload, self.configuration)
            self._sync_from_configuration()
            self._checked_at = time.monotonic()
        return True

    def _header(self) -> str | None:
        assert self.configuration is not None
        # The loaders store the whole header value ("Bearer x", "bearer x", "Basic x").
        value = self.configuration.api_key.get("BearerToken") or self.configuration.api_key.get(
            "authorization")
        prefix = self.configuration.api_key_prefix.get("BearerToken")
        if value and prefix:
            return f"{prefix} {value}"
        return value or None

    def _sync_from_configuration(self) -> None:
        cfg = self.configuration
        if cfg is None:
            return
        self.cert_file = cfg.cert_file or None
        self.key_file = cfg.key_file or None
        self.ca_file = cfg.ssl_ca_cert or None

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock


def _from_configuration(cfg: Configuration, **extra: Any) -> KubeConnection:
    if not cfg.host:
        raise KubeConfigError("no server URL configured")
    return KubeConnection(
        server=cfg.host.rstrip("/"),
        ca_file=cfg.ssl_ca_cert or None,
        cert_file=cfg.cert_file or None,
        key_file=cfg.key_file or None,
        verify_ssl=bool(cfg.verify_ssl),
        tls_server_name=getattr(cfg, "tls_server_name", None) or None,
        proxy=cfg.proxy or None,
        configuration=cfg,
        **extra,
    )


def load_kubeconfig(path: str | None = None, context: str | None = None) -> KubeConnection:
    """Resolve a kubeconfig context (default: $KUBECONFIG, then ~/.kube/config; `:`-lists merge)."""
    paths = path or os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        merged = KubeConfigMerger(paths)
        if merged.config is None:
            raise KubeConfigError(f"no kubeconfig found at {paths}")
        loader = KubeConfigLoader(config_dict=merged.config, active_context=context,
                                  config_base_path=None)
        cfg = Configuration()
        loader.load_and_set(cfg)
        current = loader.current_context
    except ConfigException as exc:
        raise KubeConfigError(f"kubeconfig {paths}: {exc}") from exc
    except KeyError as exc:
        raise KubeConfigError(f"kubeconfig {paths}: missing {exc}") from exc
    namespace = (current.get("context") or {}).get("namespace") or "default"
    return _from_configuration(cfg, namespace=namespace, context=current.get("name"),
                               reload=loader.load_and_set)


def load_incluster(
    *,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
    namespace_file: str = SERVICE_NAMESPACE_FILENAME,
    environ: Mapping[str, str] | None = None,
) -> KubeConnection:
    """The pod's service account: KUBERNETES_SERVICE_HOST/PORT, its token and CA files.

    The token file is re-read once a minute (the loader's period) and on a 401, so a
    projected token that the kubelet rotates keeps working.
    """
    loader = InClusterConfigLoader(token_filename=token_file, cert_filename=ca_file,
                                   environ=os.environ if environ is None else environ)
    cfg = Configuration()
    try:
        loader.load_and_set(cfg)
    except ConfigException as exc:
        raise KubeConfigError(f"in-cluster config: {exc}") from exc
    namespace = "default"
    if os.path.isfile(namespace_file):
        with open(namespace_file) as f:
            namespace = f.read().strip() or "default"
    return _from_configuration(cfg, namespace=namespace, reload=loader.load_and_set)
