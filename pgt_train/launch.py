"""pgt-torchrun: torchrun, but a failed run ends the way a single process does.

    pgt-torchrun --nproc_per_node=4 -m pgt_train --config configs/resnet50_cosine_pgt.yaml ...

Plain torchrun turns every rank's exit code into 1 and adds a Python traceback (ChildFailedError), so a
config error shows as a traceback and a preempted run (exit 75, which scripts/slurm requeues on) as a
failure. Here the ranks' own one-line messages are what the user sees, and the exit code is the first
failing rank's: 2 bad input, 3 non-finite, 75 preempted. Arguments are torchrun's, unchanged.
"""
from __future__ import annotations

import logging
import sys


def main(argv=None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # the agent's own "failed (exitcode: N) local_rank: ..." line repeats what the rank already said
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # killed by signal N: 128 + N
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
