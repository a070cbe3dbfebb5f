#!/usr/bin/env python3
"""Run a jaxlm command as N cooperating JAX processes on this machine (CPU, gloo collectives).

    python launch/local.py --processes 2 --devices 4 -- jaxlm train configs/gpt2-tiny.yaml

Each process sees ``--devices`` CPU devices; together they form one mesh of N x devices.
SIGTERM / SIGINT are forwarded to every process; the exit status is the worst of theirs.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices", type=int, default=1, help="CPU devices per process")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. jaxlm train CONFIG")
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --")
    coordinator = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(args.processes):
        env = {**os.environ, "JAXLM_COORDINATOR": coordinator, "JAXLM_NUM_PROCESSES": str(args.processes),
               "JAXLM_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"}
        procs.append(subprocess.Popen(command, env=env))

    def forward(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [proc.wait() for proc in procs]
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
