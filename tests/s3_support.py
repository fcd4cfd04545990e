"""A local S3-compatible server (moto's server mode, a real HTTP endpoint) for remote run dirs.

Clients find it through the usual AWS variables (pyarrow reads ``AWS_ENDPOINT_URL``); Ray
workers get them through the job's ``runtime_env`` (:func:`connect_with_env`).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from rayrec.runtime import free_port


@contextlib.contextmanager
def moto_server(bucket: str) -> Iterator[dict[str, str]]:
    """Run moto's S3 server on a free port with ``bucket`` created; yields the AWS env for it."""
    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def list_keys(env: dict[str, str], bucket: str, prefix: str = "") -> list[str]:
    """Every object key under ``prefix``."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


@contextlib.contextmanager
def connect_with_env(address: str, env: dict[str, str]) -> Iterator[None]:
    """Reconnect this driver to the cluster at ``address`` with ``env`` in the job's runtime_env
    (every task, actor, Train worker and Serve replica of the job sees it); back to a plain
    connection afterwards."""
    import ray

    ray.shutdown()
    ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()
        ray.init(address=address, log_to_driver=True)
