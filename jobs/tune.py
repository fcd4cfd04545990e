"""Ray job: `ray job submit --working-dir . -- python jobs/tune.py --config FILE`."""

import sys
from pathlib import Path

# Run the submitted working directory's rayrec, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from rayrec.cli import job_main  # noqa: E402

if __name__ == "__main__":
    job_main("tune")
