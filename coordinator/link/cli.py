"""`microgrid coordinator installer-context NAME --out DIR`: a new OSCORE
context for an installer's laptop. The coordinator keeps its side under
[link] contexts_dir/installers/NAME; DIR is the installer's side, for
`microgrid flash --installer-context DIR`. The master secret is written to
DIR/secret.json (mode 0600) and never printed: hand DIR over as you would
a key. Revoke it by removing the coordinator's directory and restarting."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable


def _installer_context(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from ..config import ConfigError
    from .contexts import new_installer_context

    try:
        config = load(args)
        kid = new_installer_context(config.resolve(config.link.contexts_dir), args.name, Path(args.out))
    except (ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"installer context {args.name!r} (kid {kid.hex()}) made; the installer's side is in {args.out} "
          f"(secret.json is mode 0600): microgrid flash --installer-context {args.out} ...")
    return 0


def add_parser(csub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None],
               load: Callable[[argparse.Namespace], Any]) -> None:
    q = csub.add_parser("installer-context", help="make an OSCORE context for an installer's laptop (microgrid flash)",
                        description=__doc__)
    common(q)
    q.add_argument("name", help="who it is for, e.g. alice-2026 (letters, digits, - _ .)")
    q.add_argument("--out", required=True, help="new directory for the installer's side of the context")
    q.set_defaults(func=lambda args: _installer_context(args, load))
