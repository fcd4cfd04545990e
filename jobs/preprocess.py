"""Ray job entrypoint: `ray job submit --working-dir . -- python jobs/preprocess.py --config FILE`."""

from rayrec.cli import job_main

if __name__ == "__main__":
    job_main("preprocess")
