"""End-to-end benchmark (issue 6): the whole pipeline on this machine, MQTT publish to queryable rollups.

    python -m bench.e2e [--devices 2000] [--messages 150000] [--packs 10000] [--latency-s 30] ...

(behind ``make bench``). Starts a private PostgreSQL+TimescaleDB (migrated), Mosquitto and Tansu in a
temporary directory, then the API, the consumer and the bridge through the real command line, one OS
process each. For single-reading messages and for SenML packs of 50, each from a seeded simulated city:

1. *ceilings*, with the very payloads and rows of the run: broker QoS 1 (``mosquitto_pub`` ->
   ``mosquitto_sub``, C clients) and a database COPY into a hypertable with the raw table's unique key;
2. *sustained*: the device process (``bench.simpub``: the simulator's generator, then raw QoS 1 publishing)
   publishes the whole stream as fast as its window of unacknowledged messages allows; the clock runs
   from the first publish until the monthly rollups count every reading (polled via the stored offsets,
   which the same transaction writes);
3. *truth*: raw readings and each rollup level, per device and metric, equal the simulator's truth file,
   and a sample of series read through the API does too; the bridge dead-lettered each malformed payload;
4. *latency* at half the sustained rate: a paced stream plus probe messages of a probe device at fixed
   times; each probe's publish-to-queryable time comes from a tight poll of the raw table.

Peak memory (VmHWM) of every cityingest process and of the device process is read before they stop.
Prints a table with each target met or NOT met. Exit status: 0 when the run completed and the store
matched the truth (missed targets are reported, not an error), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.e2e_report import Results, Spec, report
from bench.phases import Bench, Incomplete, say
from devstack.process import ServiceError

IDLE_S = 5.0
"""Seconds without traffic at the end, to tell per-second costs from per-reading ones."""
SPECS = {
    "single": Spec("single", "single", "single-reading messages", 6_000.0),
    "senml": Spec("senml", "senml", "SenML packs of 50", 30_000.0),
}


async def run(args: argparse.Namespace) -> int:
    """The whole benchmark; the exit status."""
    with _workdir(args.workdir) as workdir:
        bench = Bench(args, workdir)
        results = Results(load=os.getloadavg()[0])
        try:
            say(f"starting PostgreSQL+TimescaleDB, Mosquitto, Tansu and cityingest in {workdir}")
            await bench.start()
            await bench.warm_up()
            for name in args.workloads:
                count = args.messages if name == "single" else args.packs
                results.sustained.append(await bench.sustained(SPECS[name], count))
            if args.latency_s > 0:
                for sustained in results.sustained:
                    results.latencies.append(await bench.latency(sustained))
            results.idle = await bench.idle(IDLE_S)
        except (Incomplete, ServiceError, TimeoutError) as exc:
            results.failure = f"{type(exc).__name__}: {exc}"
        finally:
            await asyncio.shield(bench.stop())
        ok = report(args, results, bench.watcher.parts)
        if results.failure and args.workdir is None:
            for proc in bench.pipe.procs:
                print(f"--- last lines of {proc.name}'s log ---\n{proc.tail(15)}")
        return 0 if ok else 1


@contextlib.contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="cityingest-e2e-") as tmp:
        yield Path(tmp)


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name.removeprefix("CITYINGEST_").lower(), value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options; the defaults take about three minutes."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--devices", type=int, default=2_000, help="devices of each simulated city (default 2000)")
    add("--messages", type=int, default=150_000, help="single-reading messages, sustained (default 150000)")
    add("--packs", type=int, default=10_000, help="SenML packs of 50, sustained (default 10000)")
    add("--workloads", type=lambda s: s.split(","), default=["single", "senml"], help="single,senml")
    add("--latency-s", type=float, default=30.0, help="seconds of each half-rate phase; 0 skips (default 30)")
    add("--probe-rate", type=float, default=20.0, help="latency probes per second (default 20)")
    add("--poll-ms", type=float, default=10.0, help="probe poll interval (default 10 ms)")
    add("--seed", type=int, default=1, help="simulator seed (default 1)")
    add("--partitions", type=int, default=6, help="partitions of the readings topic (default 6)")
    add("--consumers", type=int, default=1, help="consumer processes (default 1)")
    add("--window", type=int, default=1_000, help="publisher's unacknowledged QoS 1 messages (default 1000)")
    add("--ceiling-publishers", type=int, default=2, help="mosquitto_pub processes for the broker ceiling")
    add("--ceiling-repeats", type=int, default=2, help="broker ceiling runs, best kept (default 2)")
    add("--api-sample", type=int, default=50, help="series per phase read back through the API (default 50)")
    add("--stall-s", type=float, default=60.0, help="give up after this long without progress (default 60)")
    add(
        "--env",
        type=_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the bridge, consumer and API, e.g. MAX_IN_FLIGHT=5000 (CITYINGEST_ implied)",
    )
    add("--workdir", type=Path, help="keep services' data and logs here instead of a temporary directory")
    args = parser.parse_args(argv)
    unknown = set(args.workloads) - set(SPECS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
