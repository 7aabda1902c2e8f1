#!/usr/bin/env python3
"""The S3 leg of the benchmark's stock pipeline and physical reference, with boto3.

    s3pipe.py put BUCKET KEY < data     multipart upload from stdin (8 MiB parts, 10 in
                                        flight: the AWS CLI's defaults)
    s3pipe.py get BUCKET KEY > data     one streamed GET, like `aws s3 cp s3://… -`

The endpoint comes from S3_ENDPOINT (e.g. http://127.0.0.1:9000); credentials from the
usual AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
"""
import os
import sys

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MiB = 1 << 20


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name="us-east-1",
        # moto assembles a multipart upload in Python (a 2 GiB completion took 35 s and more
        # here): past botocore's 60 s read timeout the retry finds the parts gone (HTTP 500).
        config=Config(
            read_timeout=600,
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("put", "get"):
        sys.exit(__doc__)
    verb, bucket, key = sys.argv[1:]
    s3 = client()
    if verb == "put":
        config = TransferConfig(multipart_chunksize=8 * MiB, multipart_threshold=8 * MiB, max_concurrency=10)
        s3.upload_fileobj(sys.stdin.buffer, bucket, key, Config=config)
    else:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        out = sys.stdout.buffer
        for chunk in body.iter_chunks(MiB):
            out.write(chunk)
        out.flush()


if __name__ == "__main__":
    main()
