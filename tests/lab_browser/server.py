"""A JupyterLab server for one test module: 127.0.0.1, a free port, a token, its own config and settings.

Nothing of the user's Jupyter setup is read (config, data, runtime, Lab settings and workspaces all live in
the server's own folder), so the Lab a test drives is the same on every machine. The server and its kernels
run in their own process group and are stopped by :meth:`LabServer.stop`, also after a failed start.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# Lab user settings: every cell in the DOM (no windowing: a test reads all outputs), no news or update
# toasts over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _private_env(home: Path, extra_env: dict[str, str]) -> dict[str, str]:
    """This process's environment with every Jupyter folder under ``home`` and the venv's bin first on PATH."""
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"), ("IPYTHONDIR", "ipython")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_TOKEN", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra_env)
    return env


def _write_lab_settings(settings_dir: Path) -> None:
    for name, values in LAB_SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


class LabServer:
    """``jupyter lab`` serving ``root_dir`` on 127.0.0.1; ``url(path)`` gives an address with the token."""

    def __init__(self, root_dir: Path, home: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.root_dir = root_dir
        self.home = home
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = home / "jupyter-lab.log"
        env = _private_env(home, extra_env or {})
        _write_lab_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]))
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root_dir}",
        ]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=root_dir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def url(self, path: str) -> str:
        """``http://127.0.0.1:PORT/PATH?token=...`` (``path`` without a leading slash)."""
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout_s: float) -> None:
        """Until ``/api/status`` answers 200; RuntimeError with the server log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"jupyter lab not answering on port {self.port} after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Ask the server to shut down (it stops its kernels), then end its process group if it is still there."""
        if self.process.poll() is None:
            try:
                request = urllib.request.Request(self.url("api/shutdown"), method="POST")
                urllib.request.urlopen(request, timeout=5).close()
                self.process.wait(timeout=timeout_s)
            except (urllib.error.URLError, ConnectionError, TimeoutError, subprocess.TimeoutExpired):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the group this server leads: its kernels too
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
