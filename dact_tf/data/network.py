"""A cheap connectivity probe for the routes that download things.

`tfds.load("glue/...")` and keras-hub presets retry for minutes when there is
no network (tfds: about 200 s of urllib3 back-off before it fails). Probing
the host first turns that into a clear error within a few seconds.
"""

import contextlib
import os
import socket
import threading
from urllib.parse import urlparse


def can_connect(host, port=443, timeout=3.0):
    """Says whether a TCP connection to `host:port` opens within `timeout`.

    When `HTTPS_PROXY`/`https_proxy` is set, the proxy is probed instead (the
    host itself is then reached through it). Name resolution and connection
    run in a daemon thread, so a stalled DNS server cannot hold the caller
    past `timeout`.

    Args:
        host: str. Host name, e.g. `"storage.googleapis.com"`.
        port: int. TCP port.
        timeout: float. Seconds to wait in all.

    Returns:
        bool: `True` when the connection opened.

    Example:
    ```python
    if not can_connect("dl.fbaipublicfiles.com", timeout=2.0):
        raise ConnectionError("offline")
    ```
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else "http://" + proxy)
        if parsed.hostname:
            host, port = parsed.hostname, parsed.port or 80
    result = []

    def probe():
        with contextlib.suppress(OSError):
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def url_host(url):
    """Returns the host name of a URL (`None` for local paths).

    Args:
        url: str.

    Returns:
        str or None.

    Example:
    ```python
    url_host("https://dl.fbaipublicfiles.com/glue/data/SST-2.zip")
    # "dl.fbaipublicfiles.com"
    ```
    """
    return urlparse(url).hostname
