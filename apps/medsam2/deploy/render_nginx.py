"""Write nginx.conf for N replicas from nginx.conf.template (beside this file).

    python apps/medsam2/deploy/render_nginx.py --listen 127.0.0.1:8000 \\
        --replica 127.0.0.1:8001 --replica 127.0.0.1:8002 --trainer 127.0.0.1:8001 --out FOLDER

Writes FOLDER/nginx.conf and creates FOLDER/logs and FOLDER/tmp; run nginx with
``nginx -p FOLDER -c FOLDER/nginx.conf -g 'daemon off;'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def render(listen: str, replicas: list, trainer: str | None = None, max_fails: int = 1,
           fail_timeout_s: int = 10, user: str | None = None) -> str:
    if not replicas:
        raise ValueError("at least one replica")
    trainer = trainer or replicas[0]
    health = f"max_fails={max_fails} fail_timeout={fail_timeout_s}s"
    servers = "\n".join(f"        server {r} {health};" for r in replicas)
    trainers = "\n".join([f"        server {trainer} {health};"]
                         + [f"        server {r} backup;" for r in replicas if r != trainer])
    text = TEMPLATE.read_text()
    text = text.replace("@USER@", f"user {user};" if user else "")
    return text.replace("@REPLICAS@", servers).replace("@TRAINER@", trainers).replace("@LISTEN@", listen)


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
    parser.add_argument("--replica", action="append", required=True, help="host:port, once per replica")
    parser.add_argument("--trainer", help="host:port of the trainer replica (default: the first)")
    parser.add_argument("--out", required=True, help="folder for nginx.conf, logs/ and tmp/")
    parser.add_argument("--user", help="the workers' user when nginx starts as root (default: nobody)")
    args = parser.parse_args()
    print(write(Path(args.out), args.listen, args.replica, args.trainer, user=args.user))


if __name__ == "__main__":
    main()
