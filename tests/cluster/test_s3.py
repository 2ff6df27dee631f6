"""The S3 server is real and checks credentials."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.cluster


def test_object_round_trips_through_the_s3_server(s3):
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="smoke/hello.txt", Body=b"hello")

    assert client.get_object(Bucket=s3.bucket, Key="smoke/hello.txt")["Body"].read() == b"hello"


def test_request_signed_with_a_wrong_secret_is_rejected(s3):
    with pytest.raises(ClientError) as err:
        s3.client(secret_key="not-the-secret").list_objects_v2(Bucket=s3.bucket)

    assert err.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
