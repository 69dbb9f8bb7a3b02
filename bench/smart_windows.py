"""Smart windows measured on generated burst timings (issue 10, item 6).

Generates a population of contacts (chatbuffer.simulator.bursts), replays every burst through
the fixed window and through each smart-window rule alone and together, and prints, per policy:
how long contacts waited after their last message, how much of that the rule saved against the
fixed window, and how many bursts were cut into two replies.

    uv run python bench/smart_windows.py [--contacts 2000] [--seeds 1 2 3]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from chatbuffer.domain.smart_window import WindowPolicy
from chatbuffer.simulator.bursts import Outcome, Population, generate, replay


def policies(base_ms: int, min_ms: int) -> dict[str, WindowPolicy]:
    fixed = WindowPolicy(base_ms=base_ms, min_ms=min_ms)
    return {
        "fixed window": fixed,
        "learned rhythm": replace(fixed, learn=True),
        "fast track": replace(fixed, fast_track=True),
        "voice-note wait": replace(fixed, voice_wait=True),
        "all three": replace(fixed, learn=True, fast_track=True, voice_wait=True),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=2_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--window-ms", type=int, default=30_000)
    parser.add_argument("--min-ms", type=int, default=8_000)
    args = parser.parse_args()

    print(
        "| seed | policy | bursts | buffers | bursts cut | cut where the fixed window was not"
        " | mean wait after last message | p50 / p90 wait | mean wait saved |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        contacts = generate(Population(contacts=args.contacts), seed)
        outcomes: dict[str, Outcome] = {
            name: replay(contacts, policy)
            for name, policy in policies(args.window_ms, args.min_ms).items()
        }
        fixed = outcomes["fixed window"]
        for name, outcome in outcomes.items():
            saved = (fixed.mean_wait_ms - outcome.mean_wait_ms) / 1000
            print(
                f"| {seed} | {name} | {outcome.bursts:,} | {outcome.buffers:,} "
                f"| {outcome.cut:,} ({outcome.cut_share:.1%}) "
                f"| {outcome.cut_early_against(fixed):,} "
                f"({outcome.cut_early_against(fixed) / outcome.bursts:.1%}) "
                f"| {outcome.mean_wait_ms / 1000:.1f} s "
                f"| {outcome.percentile_wait_ms(50) / 1000:.1f} / "
                f"{outcome.percentile_wait_ms(90) / 1000:.1f} s "
                f"| {saved:+.1f} s |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
