"""Fixtures shared by the package's tests."""

import pytest


@pytest.fixture
def moto_endpoint():
    """A moto S3 server on a loopback port with a bucket `models`; its endpoint."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import boto3
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="k",
                 aws_secret_access_key="s", region_name="us-east-1").create_bucket(Bucket="models")
    yield f"http://{host}:{port}"
    server.stop()
