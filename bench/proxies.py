"""The README's reverse-proxy recipes, run for real: nginx or Caddy in front of a relay.

The nginx or Caddy block is taken from the README's "HTTPS and reverse proxies"
section, the example host, ports and certificate are swapped for local ones
(failing loudly if the README no longer holds what is swapped), and Debian's
`nginx` or `caddy` runs as an unprivileged foreground process on 127.0.0.1.
Used by tests/test_proxies.py and by bench/chaos's hostile-input run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.certs import CertificateAuthority
from bench.common import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
# Clients connect from here, so that the proxy (127.0.0.1) and the client differ.
CLIENT = "127.0.0.2"


def readme_block(language: str) -> str:
    """The first ```{language} block of the README's "HTTPS and reverse proxies" section."""
    section = README.read_text().split("## HTTPS and reverse proxies", 1)[1].split("\n## ", 1)[0]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the README recipe no longer contains {old!r}"
        text = text.replace(old, new)
    return text


class Workdir:
    """A private directory the proxy may use, owned by the user it runs as."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="pulse-relay-proxy-"))
        self.ca = CertificateAuthority(self.path)
        self.issued = self.ca.issue("proxy")
        self._user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None

    def hand_over(self) -> None:
        """Give everything to the unprivileged user the proxy runs as (when the test is root)."""
        if self._user is None:
            return
        for path in [self.path, *self.path.rglob("*")]:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def demote(self) -> Callable[[], None] | None:
        user = self._user
        if user is None:
            return None

        def drop_privileges() -> None:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        return drop_privileges

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def start_proxy(argv: list[str], workdir: Workdir, port: int) -> subprocess.Popen[bytes]:
    workdir.hand_over()
    with (workdir.path / "proxy.log").open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir.path,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(workdir.path),
                "XDG_CONFIG_HOME": str(workdir.path / "config"),
                "XDG_DATA_HOME": str(workdir.path / "data"),
            },
            preexec_fn=workdir.demote(),
        )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                output = (workdir.path / "proxy.log").read_text(errors="replace")
                raise AssertionError(f"{argv[0]} did not start:\n{output}") from None
            time.sleep(0.05)


def stop_proxy(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def nginx_config(workdir: Workdir, port: int, relay_port: int) -> Path:
    recipe = substitute(
        readme_block("nginx"),
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "/etc/letsencrypt/live/webhooks.example.com/fullchain.pem": str(
                workdir.issued.cert_file
            ),
            "/etc/letsencrypt/live/webhooks.example.com/privkey.pem": str(workdir.issued.key_file),
            "proxy_pass http://127.0.0.1:8787;": f"proxy_pass http://127.0.0.1:{relay_port};",
        },
    )
    temp = workdir.path / "temp"
    temp.mkdir()
    config = workdir.path / "nginx.conf"
    config.write_text(
        f"""
daemon off;
worker_processes 1;
pid {workdir.path}/nginx.pid;
error_log {workdir.path}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{recipe}
}}
"""
    )
    return config


def caddy_config(workdir: Workdir, port: int, relay_port: int) -> Path:
    recipe = substitute(
        readme_block("caddy"),
        {
            "webhooks.example.com {": (
                f"https://127.0.0.1:{port} {{\n"
                f"\ttls {workdir.issued.cert_file} {workdir.issued.key_file}"
            ),
            "reverse_proxy 127.0.0.1:8787": f"reverse_proxy 127.0.0.1:{relay_port}",
        },
    )
    config = workdir.path / "Caddyfile"
    config.write_text(
        f"{{\n\tadmin off\n\tauto_https off\n\thttp_port {free_port()}\n}}\n\n{recipe}"
    )
    return config


def find_program(name: str) -> str | None:
    """The path of `nginx` or `caddy`, or None when it is not installed."""
    found = shutil.which(name)
    if found is None and Path(f"/usr/sbin/{name}").exists():
        found = f"/usr/sbin/{name}"
    return found


def start_recipe(
    name: str, workdir: Workdir, relay_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Run the README's `name` recipe ("nginx" or "caddy") in front of a relay; (process, port)."""
    program = find_program(name)
    if program is None:
        raise FileNotFoundError(f"{name} is not installed")
    port = free_port()
    if name == "nginx":
        config = nginx_config(workdir, port, relay_port)
        log = str(workdir.path / "error.log")
        argv = [program, "-p", str(workdir.path), "-e", log, "-c", str(config)]
    else:
        config = caddy_config(workdir, port, relay_port)
        argv = [program, "run", "--config", str(config), "--adapter", "caddyfile"]
    return start_proxy(argv, workdir, port), port
