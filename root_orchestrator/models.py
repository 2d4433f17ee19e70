"""Root API bodies: moved to `schemas/root_api.py`; re-exported here for code that has
not moved its imports yet (import from `schemas.root_api` in new code).

`PlacementInfo` is also what the root stores on an instance (`InstanceRecord.placement`),
with its typed `PlacementDecision`; `records.placement_from_doc` loads the older stored
form too (the decision as a plain JSON object, `{}` for none).
"""

from schemas.root_api import MAX_APPROVAL_TTL_S as MAX_APPROVAL_TTL_S
from schemas.root_api import ClusterList as ClusterList
from schemas.root_api import ClusterRejection as ClusterRejection
from schemas.root_api import ClusterView as ClusterView
from schemas.root_api import EventList as EventList
from schemas.root_api import EventRecord as EventRecord
from schemas.root_api import IdentityReset as IdentityReset
from schemas.root_api import InstanceView as InstanceView
from schemas.root_api import JobList as JobList
from schemas.root_api import JobPatch as JobPatch
from schemas.root_api import JobState as JobState
from schemas.root_api import JobSummary as JobSummary
from schemas.root_api import JobView as JobView
from schemas.root_api import MovedInstance as MovedInstance
from schemas.root_api import NodeActionResult as NodeActionResult
from schemas.root_api import NodeList as NodeList
from schemas.root_api import PlacementInfo as PlacementInfo
from schemas.root_api import PlanBatch as PlanBatch
from schemas.root_api import PlannedPlacement as PlannedPlacement
from schemas.root_api import PlanStop as PlanStop
from schemas.root_api import RegistrationTokenCreated as RegistrationTokenCreated
from schemas.root_api import RegistrationTokenList as RegistrationTokenList
from schemas.root_api import RegistrationTokenRequest as RegistrationTokenRequest
from schemas.root_api import RegistrationTokenView as RegistrationTokenView
from schemas.root_api import ReportAck as ReportAck
from schemas.root_api import RolloutState as RolloutState
from schemas.root_api import RolloutView as RolloutView
from schemas.root_api import StuckInstance as StuckInstance
from schemas.root_api import UpdatePlan as UpdatePlan
from schemas.root_api import VersionList as VersionList
from schemas.root_api import VersionView as VersionView
