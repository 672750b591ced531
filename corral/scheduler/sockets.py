"""Whether a process tree listens on a port (psutil only: also imported by the Ray
actor on a node, which should start in milliseconds)."""

from __future__ import annotations


def tree_listens(pid: int, port: int) -> bool:
    """Does process ``pid`` or a descendant listen on TCP ``port``? A port that was
    free when it was chosen may be taken by another program's server before the
    worker binds it; then requests would go to a stranger. Where sockets cannot be
    read, it is taken on trust (True)."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return True
    readable = False
    for process in tree:
        try:
            sockets = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        readable = True
        if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in sockets):
            return True
    return not readable
