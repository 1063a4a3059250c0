"""Talking to AWS: boto3 clients with ferry's timeouts and no retries of their own, and AWS errors as ferry's.

Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
profiles, SSO, instance roles); ferry never reads or prints them, and keeps
botocore's debug log (which dumps signed headers) quiet even under ``--debug``.
Retries are the provider registry's (``total_max_attempts=1`` here); every
call has timeouts.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

from ...errors import ConfigError, ProviderError, TransientError
from .. import sdk
from ..base import translated

T = TypeVar("T")

TRANSIENT_CODES = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException",
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
}
AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
              "UnrecognizedClientException", "AccessDeniedException", "ExpiredToken"}
GONE_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


class AWSError(ProviderError):
    """A refusal from AWS, with its error code for the callers that expect some."""

    def __init__(self, message: str, code: str, hint: str | None = None):
        super().__init__(message, hint)
        self.code = code


def translate(exc: Exception, what: str) -> Exception:
    """The one place botocore failures become ferry's errors."""
    from botocore.exceptions import (
        ClientError, ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, HTTPClientError,
        NoCredentialsError, NoRegionError, PartialCredentialsError, ProfileNotFound, ReadTimeoutError,
        SSOTokenLoadError, TokenRetrievalError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or code or "no reason given")
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            headers = (exc.response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            try:
                retry_after = min(30.0, max(0.0, float(headers.get("retry-after", "")))) if headers.get("retry-after") \
                    else None
            except ValueError:
                retry_after = None  # an HTTP date: the backoff schedule is good enough
            return TransientError(f"EC2 {what} failed ({code or status}): {message}", retry_after=retry_after)
        if code in AUTH_CODES:
            return AWSError(f"AWS refused to {what}: {message}", code,
                            hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or your AWS profile) "
                                 "and its permissions")
        return AWSError(f"EC2 could not {what}: {code}: {message}", code)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ConfigError("no AWS credentials for ec2",
                           hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                "or configure a profile: aws configure")
    if isinstance(exc, NoRegionError):
        return ConfigError("no AWS region for ec2", hint="set ferry.providers.ec2.region, or pass --region")
    if isinstance(exc, (ProfileNotFound, TokenRetrievalError, SSOTokenLoadError)):
        return ConfigError(f"AWS credentials for ec2 are not usable: {exc}",
                           hint="check AWS_PROFILE (aws configure list), or log in again: aws sso login")
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
                        HTTPClientError)):
        return TransientError(f"EC2 {what} failed: {type(exc).__name__}")
    return exc


def quiet_sdk_logs() -> None:
    """botocore's DEBUG log prints signed request headers; --debug is for ferry's own story."""
    for name in ("botocore", "boto3", "s3transfer"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)




def call(what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """One AWS call, its failures translated (``what`` says what ferry was doing, for the message)."""
    return translated(translate, what, fn, *args, **kwargs)


# Where boto3 finds credentials without asking the network: variables, then the shared files.
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def credentials_present(home: str | None = None) -> bool:
    """Does boto3 have a credential source short of the instance metadata service (169.254.169.254)?

    Without one, ferry says "no AWS credentials" itself: boto3 would import
    for 0.3 s and then ask the link-local metadata endpoint, a network call
    no laptop without AWS set up should make. ``use_instance_role: true``
    (ferry on an EC2 instance with a role) lets boto3 ask it.
    """
    import os
    from pathlib import Path

    if any(os.environ.get(name) for name in CREDENTIAL_VARIABLES):
        return True
    base = Path(home or os.path.expanduser("~")) / ".aws"
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or base / "credentials",
             os.environ.get("AWS_CONFIG_FILE") or base / "config"]
    return any(Path(f).is_file() for f in files)


class Clients:
    """One boto3 client per (service, region), made on first use."""

    def __init__(self, region: str, endpoint_url: str | None, use_instance_role: bool = False):
        self.region, self.endpoint_url = region, endpoint_url
        self.use_instance_role = use_instance_role
        self._clients: dict[tuple[str, str], Any] = {}

    def __call__(self, service: str, region: str | None = None):
        region = region or self.region
        if (service, region) not in self._clients:
            if not self.use_instance_role and not credentials_present():
                raise ConfigError("no AWS credentials for ec2",
                                  hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or configure a profile: "
                                       "aws configure (on an EC2 instance with a role: "
                                       "ferry.providers.ec2.use_instance_role: true)")
            boto3 = sdk("boto3", "ec2")
            from botocore.config import Config

            quiet_sdk_logs()

            def make():
                session = boto3.session.Session(region_name=region)  # raises for a missing profile
                return session.client(
                    service, endpoint_url=self.endpoint_url or None,
                    config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                  connect_timeout=10, read_timeout=60),
                )

            self._clients[(service, region)] = call("set up the AWS client", make)
        return self._clients[(service, region)]
