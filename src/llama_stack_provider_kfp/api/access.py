"""Who may reach a job: llama-stack's own access rules (the server's `access_policy`, else
its `default_policy()`), applied to job records through `is_action_allowed`.

A job is a resource of type `post_training_job` owned by the user who submitted it. Listing,
status and artifacts need `read`, cancelling `update`. Without auth there is no user and
everything is allowed, as before. Records without an owner (written before jobs had owners,
or without auth) are unowned: the default policy lets every user reach them.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_stack.core.access_control.access_control import is_action_allowed
from llama_stack.core.access_control.datatypes import AccessRule, Action
from llama_stack.core.datatypes import User
from llama_stack.core.request_headers import get_authenticated_user

from ..jobs.record import Owner

RESOURCE_TYPE = "post_training_job"
READ, UPDATE = Action.READ, Action.UPDATE


@dataclass(frozen=True)
class JobResource:
    """llama-stack's ProtectedResource protocol for one job."""

    identifier: str
    owner: User | None
    type: str = RESOURCE_TYPE


class Access:
    def __init__(self, policy: list[AccessRule] | None = None) -> None:
        self.policy = list(policy or [])

    @staticmethod
    def user() -> User | None:
        """The caller, as the server authenticated them (None without auth)."""
        return get_authenticated_user()

    @staticmethod
    def owner(user: User | None) -> Owner | None:
        return Owner(principal=user.principal, attributes=user.attributes) if user else None

    def allows(self, action: Action, job_uuid: str, owner: Owner | None, user: User | None) -> bool:
        owned = User(owner.principal, owner.attributes) if owner is not None else None
        return is_action_allowed(self.policy, action, JobResource(job_uuid, owned), user)
