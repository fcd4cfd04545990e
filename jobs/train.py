"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/train.py --config FILE`."""

from rayrec.cli import job_main

if __name__ == "__main__":
    job_main("train")
