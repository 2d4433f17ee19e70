"""Cluster API bodies: moved to `schemas/cluster_api.py`; re-exported here for code that
has not moved its imports yet (import from `schemas.cluster_api` in new code)."""

from schemas.cluster_api import API_ERRORS as API_ERRORS
from schemas.cluster_api import DrainResult as DrainResult
from schemas.cluster_api import ErrorBody as ErrorBody
from schemas.cluster_api import InstanceList as InstanceList
from schemas.cluster_api import InstanceView as InstanceView
from schemas.cluster_api import NodeDetail as NodeDetail
from schemas.cluster_api import NodeList as NodeList
