"""Write nginx.conf for N replicas from nginx.conf.template (beside this file).

    python apps/medsam2/deploy/render_nginx.py --listen 127.0.0.1:8000 \\
        --replica r1=127.0.0.1:8001 --replica r2=127.0.0.1:8002 --trainer 127.0.0.1:8001 --out FOLDER

A replica is ``name=host:port`` (a plain ``host:port`` is named r1, r2, ... in the order given):
studies are split by a hash of their id over the names, so the split does not depend on ports.

Writes FOLDER/nginx.conf and creates FOLDER/logs and FOLDER/tmp; run nginx with
``nginx -p FOLDER -c FOLDER/nginx.conf -g 'daemon off;'``.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def named(replicas: list) -> list:
    """[(name, address)] from ``name=host:port`` or plain ``host:port`` (named r1, r2, ...)."""
    pairs = []
    for n, entry in enumerate(replicas, start=1):
        name, _, address = entry.rpartition("=")
        name = name or f"r{n}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not address:
            raise ValueError(f"replica {entry!r}: expected name=host:port, the name letters, digits, - or _")
        pairs.append((name, address))
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError(f"replica names must differ: {[name for name, _ in pairs]}")
    return pairs


def split_lines(names: list) -> list:
    """split_clients buckets: each name an equal share (two decimals, the last takes the rest)."""
    share = math.floor(10000 / len(names)) / 100
    return [f"        {share:.2f}% {name};" for name in names[:-1]] + [f"        * {names[-1]};"]


def render(listen: str, replicas: list, trainer: str | None = None, max_fails: int = 1,
           fail_timeout_s: int = 10, user: str | None = None) -> str:
    if not replicas:
        raise ValueError("at least one replica")
    pairs = named(replicas)
    addresses = [address for _, address in pairs]
    trainer = trainer or addresses[0]
    health = f"max_fails={max_fails} fail_timeout={fail_timeout_s}s"
    groups = []
    for name, address in pairs:
        backups = [f"        server {other} backup;" for other in addresses if other != address]
        groups.append("\n".join([f"    upstream medsam2_{name} {{", f"        server {address} {health};", *backups,
                                 "        keepalive 16;", "    }"]))
    trainers = "\n".join([f"        server {trainer} {health};"]
                         + [f"        server {r} backup;" for r in addresses if r != trainer])
    text = TEMPLATE.read_text()
    text = text.replace("@USER@", f"user {user};" if user else "")
    text = text.replace("@SPLIT@", "\n".join(split_lines([name for name, _ in pairs])))
    return text.replace("@REPLICAS@", "\n".join(groups)).replace("@TRAINER@", trainers).replace("@LISTEN@", listen)


def write(folder: Path, listen: str, replicas: list, trainer: str | None = None, **health) -> Path:
    folder = Path(folder)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    path = folder / "nginx.conf"
    path.write_text(render(listen, replicas, trainer, **health))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--replica", action="append", required=True, help="name=host:port (or host:port, named r1, r2, ...), once per replica")
    parser.add_argument("--trainer", help="host:port of the trainer replica (default: the first)")
    parser.add_argument("--out", required=True, help="folder for nginx.conf, logs/ and tmp/")
    parser.add_argument("--user", help="the workers' user when nginx starts as root (default: nobody)")
    args = parser.parse_args()
    print(write(Path(args.out), args.listen, args.replica, args.trainer, user=args.user))


if __name__ == "__main__":
    main()
