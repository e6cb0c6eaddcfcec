"""The public edge of the production topology: Debian's nginx in front of the receiver and the UI.

The receiver bounds what one request may cost, yet every client that sends a byte a minute is
still a connection of a Python process. nginx holds such clients for a few hundred bytes each,
buffers every body whole before the receiver sees it, answers 413 at the receiver's own body
limit, and limits each client address's rate and connections. It is also the one way in: the UI
is behind HTTP basic auth, the other processes listen on loopback. With PROXY_PORT
set, `automation-pipelines prod` renders `deploy/nginx/nginx.conf.template` into the instance
home and supervises nginx in the foreground with the other processes (`docs/deployment.md`).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import shutil
import socket
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

from automation_pipelines import settings
from automation_pipelines.paths import PROJECT_ROOT
from automation_pipelines.reliability.supervisor import Service
from automation_pipelines.settings import ConfigurationError
from automation_pipelines.webhooks.sources import SourceConfigError, load_sources

TEMPLATE = PROJECT_ROOT / "deploy" / "nginx" / "nginx.conf.template"
#: Debian's package puts it here (`make nginx`); elsewhere it is looked up on PATH.
NGINX = Path("/usr/sbin/nginx")
PORT_ENV = "PROXY_PORT"
HOST_ENV = "PROXY_HOST"
CERT_ENV, KEY_ENV = "PROXY_TLS_CERT", "PROXY_TLS_KEY"
HTPASSWD_ENV = "PROXY_HTPASSWD"
TRUSTED_ENV = "PROXY_TRUSTED_PROXIES"
#: What a person may send the UI in one request (a launchpad's run config, say).
UI_MAX_BODY = "10m"
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class _Template(string.Template):
    delimiter = "@"  # nginx itself uses `$` and braces


@dataclass(frozen=True)
class ProxySettings:
    """Where the edge listens, how it proves itself (TLS) and who may see the UI, and how much
    each client address may ask of it."""

    port: int
    htpasswd: Path
    host: str = "0.0.0.0"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: tuple[str, ...] = ()
    #: Generous: a sender's bursts come from few addresses, and some (GitHub) never deliver a
    #: refused event again by themselves; the limit is there to stop one abusive client.
    hooks_rate: int = 200
    hooks_burst: int = 1000
    ui_rate: int = 20
    ui_burst: int = 200
    connections_per_client: int = 50
    header_timeout: int = 10
    body_timeout: int = 10
    send_timeout: int = 10
    keepalive_timeout: int = 15
    worker_connections: int = 4096

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def probe_host(self) -> str:
        """Where this machine reaches the edge (a wildcard address is not one to connect to)."""
        if self.host in _WILDCARDS:
            return "::1" if ":" in self.host else "127.0.0.1"
        return self.host


def from_env() -> ProxySettings | None:
    """The proxy's settings, or None when PROXY_PORT is unset (no proxy). Missing or unsafe
    values raise `ConfigurationError` naming the variable."""
    if not os.environ.get(PORT_ENV):
        return None
    cert, key = _path_setting(CERT_ENV), _path_setting(KEY_ENV)
    if (cert is None) != (key is None):
        raise ConfigurationError(
            f"set both {CERT_ENV} and {KEY_ENV} (TLS on the proxy), or neither (plain HTTP "
            "behind another TLS terminator)"
        )
    htpasswd = _path_setting(HTPASSWD_ENV)
    if htpasswd is None:
        raise ConfigurationError(
            f"{PORT_ENV} is set, so the UI is served through the proxy behind basic auth: set "
            f"{HTPASSWD_ENV} to a users file kept outside the repository, made with e.g. "
            "printf 'alice:%s\\n' \"$(openssl passwd -6)\" >> /etc/automation_pipelines/htpasswd"
        )
    for name, path in ((HTPASSWD_ENV, htpasswd), (KEY_ENV, key)):
        if path is not None and path.resolve().is_relative_to(PROJECT_ROOT.resolve()):
            raise ConfigurationError(
                f"{name}={path} is inside the project folder, one `git add` away from being "
                "published; keep it outside the repository"
            )
    return ProxySettings(
        port=settings.port(PORT_ENV, 443),
        htpasswd=htpasswd,
        host=os.environ.get(HOST_ENV) or ProxySettings.host,
        tls_cert=cert,
        tls_key=key,
        trusted_proxies=_networks(os.environ.get(TRUSTED_ENV) or None),
        hooks_rate=settings.integer("PROXY_HOOKS_RATE", ProxySettings.hooks_rate, minimum=1),
        hooks_burst=settings.integer("PROXY_HOOKS_BURST", ProxySettings.hooks_burst),
        ui_rate=settings.integer("PROXY_UI_RATE", ProxySettings.ui_rate, minimum=1),
        ui_burst=settings.integer("PROXY_UI_BURST", ProxySettings.ui_burst),
        connections_per_client=settings.integer(
            "PROXY_CONNECTIONS_PER_CLIENT", ProxySettings.connections_per_client, minimum=1
        ),
        header_timeout=_seconds("PROXY_HEADER_TIMEOUT_SECONDS", ProxySettings.header_timeout),
        body_timeout=_seconds("PROXY_BODY_TIMEOUT_SECONDS", ProxySettings.body_timeout),
        send_timeout=_seconds("PROXY_SEND_TIMEOUT_SECONDS", ProxySettings.send_timeout),
        keepalive_timeout=_seconds(
            "PROXY_KEEPALIVE_TIMEOUT_SECONDS", ProxySettings.keepalive_timeout
        ),
        worker_connections=settings.integer(
            "PROXY_WORKER_CONNECTIONS", ProxySettings.worker_connections, minimum=64
        ),
    )


def _path_setting(name: str) -> Path | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    path = Path(raw)
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise ConfigurationError(f"{name}={raw}: no such file")
    return path


def _seconds(name: str, default: int) -> int:
    return settings.integer(name, default, minimum=1, maximum=3600)


def _networks(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    networks = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            networks.append(str(ipaddress.ip_network(part.strip(), strict=False)))
        except ValueError:
            raise ConfigurationError(
                f"{TRUSTED_ENV}: {part.strip()!r} is not an address or network"
            ) from None
    return tuple(networks)


def check_upstream_host(host: str) -> None:
    """With the proxy as the way in, the other processes must not listen on every interface:
    a client could reach them around its limits and its passwords."""
    if host.strip("[]") in _WILDCARDS:
        raise ConfigurationError(
            f"with the proxy ({PORT_ENV}) the UI, receiver and code server must not listen on "
            f"every interface ({host!r}): set AUTOMATION_HOST (--host) to 127.0.0.1 or an "
            "internal address"
        )


def body_limits(sources_file: Path | None = None) -> dict[str, int]:
    """Each webhook source's body limit, as the receiver enforces it."""
    try:
        sources = load_sources(sources_file)
    except SourceConfigError as error:
        raise ConfigurationError(str(error)) from None
    return {name: source.max_body_bytes for name, source in sources.items()}


def _address(host: str, port: int) -> str:
    host = "127.0.0.1" if host in _WILDCARDS else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _worker_user() -> str:
    """nginx's workers run as the user that runs the topology; only a root master takes the
    directive (it would otherwise drop them to `nobody`, who cannot read the instance home)."""
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.geteuid()).pw_name
    return f"user {user} {grp.getgrgid(os.getegid()).gr_name};"


def render(
    proxy: ProxySettings,
    *,
    prefix: Path,
    upstream_host: str,
    webserver_port: int,
    receiver_port: int,
    limits: dict[str, int],
) -> str:
    """nginx.conf for `proxy` in front of the webserver and receiver at `upstream_host`."""
    receiver = _address(upstream_host, receiver_port)
    listen_host = f"[{proxy.host}]" if ":" in proxy.host else proxy.host
    indent = " " * 8
    tls = ""
    if proxy.tls:
        tls = "".join(
            f"{indent}{line}\n"
            for line in (
                f"ssl_certificate {proxy.tls_cert};",
                f"ssl_certificate_key {proxy.tls_key};",
                "ssl_protocols TLSv1.2 TLSv1.3;",
                "ssl_prefer_server_ciphers off;",
                "ssl_session_cache shared:tls:10m;",
                "ssl_session_timeout 1d;",
                "ssl_session_tickets off;",
                'add_header Strict-Transport-Security "max-age=63072000" always;',
            )
        )
    real_ip = "".join(f"{indent}set_real_ip_from {network};\n" for network in proxy.trusted_proxies)
    if real_ip:
        real_ip += f"{indent}real_ip_header X-Forwarded-For;\n{indent}real_ip_recursive on;\n"
    sources = "\n".join(
        f"{indent}    location = /hooks/{name} {{\n"
        f"{indent}        client_max_body_size {limit};\n"
        f"{indent}        proxy_pass http://{receiver};\n"
        f"{indent}    }}"
        for name, limit in sorted(limits.items())
    )
    return _Template(TEMPLATE.read_text()).substitute(
        user=_worker_user(),
        prefix=prefix,
        open_files=2 * proxy.worker_connections + 64,
        worker_connections=proxy.worker_connections,
        header_timeout=proxy.header_timeout,
        body_timeout=proxy.body_timeout,
        send_timeout=proxy.send_timeout,
        keepalive_timeout=proxy.keepalive_timeout,
        hooks_rate=proxy.hooks_rate,
        hooks_burst=proxy.hooks_burst,
        ui_rate=proxy.ui_rate,
        ui_burst=proxy.ui_burst,
        connections_per_client=proxy.connections_per_client,
        listen=f"{listen_host}:{proxy.port}{' ssl' if proxy.tls else ''}",
        tls=tls,
        real_ip=real_ip,
        ui_max_body=UI_MAX_BODY,
        hooks_max_body=min(limits.values()),
        source_locations=sources,
        receiver=receiver,
        webserver=_address(upstream_host, webserver_port),
        htpasswd=proxy.htpasswd,
    )


@dataclass(frozen=True)
class Edge:
    """A rendered proxy: its settings, its folder (pid, logs, temp files) and its config."""

    settings: ProxySettings
    prefix: Path
    config: Path

    def argv(self) -> list[str]:
        return [str(nginx_binary()), "-p", str(self.prefix), "-c", str(self.config), "-e", "stderr"]


def nginx_binary() -> Path:
    """Debian's nginx; its absence names the way to install it."""
    found = NGINX if NGINX.is_file() else Path(shutil.which("nginx") or NGINX)
    if not found.is_file():
        raise ConfigurationError(
            f"{PORT_ENV} is set but nginx is not installed: run `make nginx` "
            "(or `sudo apt-get install nginx`)"
        )
    return found


def prepare(
    proxy: ProxySettings,
    home: Path,
    *,
    upstream_host: str,
    webserver_port: int,
    receiver_port: int,
    sources_file: Path | None = None,
) -> Edge:
    """Render the config into `home/proxy` and have nginx check it (`nginx -t`), so a bad
    certificate or setting stops the start with nginx's own words."""
    prefix = home / "proxy"
    for folder in ("logs", "temp"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(
        render(
            proxy,
            prefix=prefix,
            upstream_host=upstream_host,
            webserver_port=webserver_port,
            receiver_port=receiver_port,
            limits=body_limits(sources_file),
        )
    )
    edge = Edge(proxy, prefix, config)
    check = subprocess.run([*edge.argv(), "-t", "-q"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise ConfigurationError(
            f"nginx refuses the proxy's config {config}: {check.stderr.strip()}"
        )
    return edge


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def service(edge: Edge) -> Service:
    """nginx in the foreground (`daemon off;`), ready once it accepts connections."""
    host, port = edge.settings.probe_host, edge.settings.port
    return Service("proxy", edge.argv(), ready=lambda: _accepts(host, port))
