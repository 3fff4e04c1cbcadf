"""Checkpoint files that live elsewhere: Hugging Face hub names (the local cache first; without a network a
one-line error in seconds) and http(s) URLs (cached under torch.hub's folder)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..extras import needs


def hub_file(spec: str, repo: str, filename: str) -> Path:
    """The cached copy of a hub file, else a download; without a network a one-line error in seconds (the
    hub client alone retries for about half a minute) that says how to work offline."""
    with needs("hub", "hub names need huggingface_hub"):
        from huggingface_hub import constants, hf_hub_download
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # not cached yet
        pass
    offline = f"{spec!r} is not in the local Hugging Face cache"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise CheckpointError(f"{offline} and HF_HUB_OFFLINE is set; download it once with a network, or pass "
                              "the file's local path")
    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    problem = None if proxied else unreachable(constants.ENDPOINT)  # through a proxy the client must judge
    if problem:
        raise CheckpointError(f"{offline} and the hub ({constants.ENDPOINT}) cannot be reached ({problem}): "
                              "offline? Download the file once with a network, or pass its local path")
    try:
        return Path(hf_hub_download(repo, filename, etag_timeout=10))
    except Exception as err:  # missing repositories or files, a network that fails half-way
        raise CheckpointError(f"could not fetch {spec!r} from the hub: {str(err).splitlines()[0]}") from None


def unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to ``url``'s host fails within ``timeout`` seconds, or None. The name look-up runs
    in a thread, as the socket's own timeout does not bound it."""
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Late
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    pool = ThreadPoolExecutor(1)
    try:
        pool.submit(socket.create_connection, address, timeout).result(timeout=timeout).close()
    except Late:
        return f"no answer within {timeout:g} s"
    except OSError as err:
        return err.strerror or type(err).__name__
    finally:
        pool.shutdown(wait=False)
    return None


def url_file(spec: str) -> Path:
    """An http(s) file, downloaded once into torch.hub's checkpoint folder."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / spec.rsplit("/", 1)[-1]
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(spec, str(cache))
        except Exception as err:
            raise CheckpointError(f"could not download {spec!r}: {err}") from None
    return cache
