"""deploy/: the Kubernetes manifests validate against the Kubernetes OpenAPI schemas
(kubernetes-validate, offline, strict: unknown fields are errors) and fit together
(names, shard counts, plans, secrets)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate  # the test extra: pip install -e '.[test]'
import pytest
import yaml

from migrator.plan import check_secrets, load_plan

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
VERSIONS = ("1.29.0", "1.33.0", "1.37.0")


def docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                out.append((path.name, doc))
    return out


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _n, d in docs() if d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    return found


def shard_jobs() -> list[tuple[str, dict[str, Any]]]:
    """(name, Job spec) of the sharded Jobs: the migration and the CronJob's template."""
    job = one("Job", "migrator-acme")
    cron = one("CronJob", "migrator-acme-mirror")
    return [("job", job["spec"]), ("cronjob", cron["spec"]["jobTemplate"]["spec"])]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str):
    found = docs()
    assert {d["kind"] for _n, d in found} >= {"Job", "CronJob", "ConfigMap", "Secret", "PersistentVolumeClaim"}
    for name, doc in found:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {exc}")


def test_the_validator_rejects_a_broken_job():
    """The check above can fail: an unknown field and a wrong type are caught."""
    job = one("Job", "migrator-acme")
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["completionMod"] = bad["spec"].pop("completionMode")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(job))
    bad["spec"]["parallelism"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


@pytest.mark.parametrize("which", ["job", "cronjob"])
def test_indexed_jobs_run_shard_index_plus_one_of_n(which: str):
    spec = dict(shard_jobs())[which]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    env = env_of(container)
    assert int(env["SHARDS"]) == spec["completions"]
    script = " ".join(container["args"])
    assert container["command"] == ["/bin/sh", "-c"]
    assert re.search(r'exec migrator run "\$PLAN" --shard "\$\(\(JOB_COMPLETION_INDEX \+ 1\)\)/\$SHARDS"', script)
    assert shlex.split(script)  # balanced quotes
    assert env["MIGRATOR_SHARD_EPOCH"]["fieldRef"]["fieldPath"].startswith("metadata.labels[")
    assert env["MIGRATOR_STATE_JOURNAL"] in ("delete", "wal", "truncate", "persist")
    # exit 2 (plan error) is not retried
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailIndex" and r.get("onExitCodes", {}).get("values") == [2] for r in rules)


def test_cronjob_is_nightly_and_never_overlaps():
    cron = one("CronJob", "migrator-acme-mirror")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    minute, hour, dom, month, dow = cron["schedule"].split()
    assert (dom, month, dow) == ("*", "*", "*") and hour.isdigit() and minute.isdigit()


def test_names_fit_together_and_run_as_the_image_user():
    secret = one("Secret", "migrator-acme-secrets")
    configmap = one("ConfigMap", "migrator-acme-plan")
    pvc = one("PersistentVolumeClaim", "migrator-acme-state")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = [s["template"]["spec"] for _w, s in shard_jobs()] + [
        one("Job", "migrator-acme-merge")["spec"]["template"]["spec"]
    ]
    for pod in pods:
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["plans"]["configMap"]["name"] == configmap["metadata"]["name"]
        assert vols["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/plans"]["readOnly"] is True and "/state" in mounts and "/tmp" in mounts
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    for _w, spec in shard_jobs():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    assert all((DEPLOY / r).exists() for r in kustomization["resources"])
    assert "secret.example.yaml" not in kustomization["resources"]


def test_configmap_plans_load_and_their_secrets_come_from_the_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The plans in the ConfigMap are valid plans, share one name (one state), and every
    password_env they name is a key of the Secret."""
    configmap = one("ConfigMap", "migrator-acme-plan")
    secret = one("Secret", "migrator-acme-secrets")
    for key, text in configmap["data"].items():
        (tmp_path / key).write_text(text, encoding="utf-8")
    for key in secret["stringData"]:
        monkeypatch.setenv(key, "x")
    plans = {}
    for key in configmap["data"]:
        if key.endswith(".yaml"):
            plans[key] = load_plan(tmp_path / key)
            assert check_secrets(plans[key]) == []
            assert "password:" not in configmap["data"][key]
    assert {p.name for p in plans.values()} == {"acme"}
    assert len({tuple(j.id for j in p.jobs) for p in plans.values()}) == 1
    assert plans["acme-mirror.yaml"].jobs[0].options.mode == "mirror"
    names = set(re.findall(r"password_env: (\w+)", "".join(configmap["data"].values())))
    assert names and names <= set(secret["stringData"])
    monkeypatch.delenv(sorted(names)[0])
    assert check_secrets(plans["acme.yaml"])  # a missing variable is noticed
