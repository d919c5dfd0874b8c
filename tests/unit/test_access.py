"""Who may reach a job, as llama-stack's own rules decide it (api/access.py): its default
policy, a custom one, no auth, and the owner a record keeps."""

from __future__ import annotations

from llama_stack.core.access_control.access_control import default_policy
from llama_stack.core.access_control.datatypes import AccessRule
from llama_stack.core.datatypes import User

from llama_stack_provider_kfp.api.access import READ, UPDATE, Access
from llama_stack_provider_kfp.jobs.record import Owner

ALICE = User("alice", {"roles": ["team-a"], "teams": ["x"]})
CAROL = User("carol", {"roles": ["team-a"]})
BOB = User("bob", {"roles": ["team-b"]})
OWNED = Access.owner(ALICE)


def test_the_default_policy_permits_the_owner_shared_attributes_and_unowned_jobs():
    access = Access()  # the server sets no access_policy
    assert Owner(principal="alice", attributes={"roles": ["team-a"], "teams": ["x"]}) == OWNED
    assert access.allows(READ, "j", OWNED, ALICE) and access.allows(UPDATE, "j", OWNED, ALICE)
    assert access.allows(UPDATE, "j", OWNED, CAROL)  # one shared role is enough
    assert not access.allows(READ, "j", OWNED, BOB)
    assert access.allows(UPDATE, "j", None, BOB)  # unowned: a record from before owners
    assert access.allows(UPDATE, "j", OWNED, None)  # no auth: no user, everything allowed
    assert Access.owner(None) is None


def test_a_custom_policy_is_applied_as_written():
    only_owners = [AccessRule.model_validate({"permit": {"actions": ["read", "update"]},
                                              "when": "user is owner"})]  # fmt: skip
    access = Access(only_owners)
    assert access.allows(UPDATE, "j", OWNED, ALICE)
    assert not access.allows(READ, "j", OWNED, CAROL)
    assert not access.allows(READ, "j", None, BOB)  # nothing permits unowned jobs here
    scoped = [AccessRule.model_validate({"forbid": {"actions": ["update"],
                                                    "resource": "post_training_job::*"},
                                         "unless": "user is owner"}),
              *default_policy()]  # fmt: skip
    assert not Access(scoped).allows(UPDATE, "j", OWNED, CAROL)  # reads still as the default
    assert Access(scoped).allows(READ, "j", OWNED, CAROL)


def test_paths_under_auth_stay_under_the_roots_and_readable_job_folders(tmp_path):
    import pytest

    from llama_stack_provider_kfp.core.errors import Forbidden
    from llama_stack_provider_kfp.service.paths import PathRoots

    root, work, elsewhere = tmp_path / "models", tmp_path / "work", tmp_path / "elsewhere"
    for d in (root / "m", work / "jobs" / "mine" / "output", work / "jobs" / "theirs",
              elsewhere):  # fmt: skip
        d.mkdir(parents=True)
    (root / "escape").symlink_to(elsewhere)
    paths = PathRoots([root], work, may_read_job=lambda job: job == "mine")
    paths.check(str(root / "m"), "model")
    paths.check(str(work / "jobs" / "mine" / "output"), "checkpoint_dir")
    paths.check("s3://bucket/models/m", "checkpoint_dir")  # not local: not a path rule
    paths.check_model("Llama3.2-1B-Instruct")  # a descriptor, not a path
    paths.check_dataset(f"huggingface:///json?data_files={root}/m/rows.jsonl&split=train", "ds")
    refused = [
        (paths.check, str(elsewhere), "model"),
        (paths.check, str(root / "escape"), "model"),  # a link out of a root leads out
        (paths.check, str(work / "jobs" / "theirs"), "checkpoint_dir"),
        (paths.check, str(work / "jobs"), "checkpoint_dir"),
        (paths.check, f"file://{elsewhere}/t.yaml", "evaluation task file"),
        (paths.check_dataset, "/etc/hostname", "dataset 'x': its file"),
        (paths.check_dataset, "huggingface:///json?data_files=/etc/passwd", "dataset 'x'"),
    ]
    for check, location, what in refused:
        with pytest.raises(Forbidden, match="allowed_path_roots"):
            check(location, what)


def test_the_providers_s3_job_folders_and_claims_under_auth(tmp_path):
    """Another user's checkpoint in the provider's own S3 job prefix is not a model to start
    from; claims only from allowed_claims; other S3 locations are S3's to allow."""
    import pytest

    from llama_stack_provider_kfp.core.errors import Forbidden
    from llama_stack_provider_kfp.core.locations import Location
    from llama_stack_provider_kfp.service.paths import PathRoots

    jobs = Location("s3", "kfp", "llama-stack-post-training/jobs")
    paths = PathRoots([], tmp_path, lambda job: job == "mine", jobs, ["team-data"])
    mine = "s3://kfp/llama-stack-post-training/jobs/mine/output/checkpoints/epoch_1"
    paths.check(mine, "checkpoint_dir")
    paths.check_model(mine)
    paths.check("s3://kfp/users/models/m", "model")  # the bucket, outside the job prefix
    paths.check("s3://other/llama-stack-post-training/jobs/theirs", "model")  # another bucket
    paths.check("pvc://team-data/models/m", "model")
    paths.check_dataset("pvc://team-data/rows.jsonl", "dataset 'x': its file")
    theirs = "s3://kfp/llama-stack-post-training/jobs/theirs/output/checkpoints/epoch_1"
    for check, location in [(paths.check, theirs), (paths.check_model, theirs),
                            (paths.check_dataset, f"{theirs}/../../input/train.jsonl"),
                            (paths.check, "s3://kfp/llama-stack-post-training/jobs/"),
                            (paths.check, "s3://kfp/llama-stack-post-training/jobs/mine/../t"),
                            (paths.check, "s3://kfp/users/../llama-stack-post-training/jobs/t"),
                            (paths.check, "s3://kfp/llama-stack-post-training/jobs")]:  # fmt: skip
        with pytest.raises(Forbidden, match="folders of jobs they may read"):
            check(location, "checkpoint_dir") if check != paths.check_model else check(location)
    for location in ("pvc://other-team/models/m", "pvc://team-data-2/x"):
        with pytest.raises(Forbidden, match="allowed_claims"):
            paths.check(location, "model")
    with pytest.raises(Forbidden, match="allowed_claims"):
        paths.check_dataset("pvc://other-team/rows.jsonl", "dataset 'x': its file")
