"""``trackside import mlflow --tracking-uri URI [--experiment NAME]``: MLflow runs into trackside.

Read through MLflow's own client, so any tracking store it reads works (a database such as
``sqlite:///mlflow.db``, a tracking server, a file store). For each run:

- params -> config (MLflow keeps them as strings; so does the import);
- every metric's full history -> rows at the metric's steps, each row at the time of its
  latest value (values of one key at one step: the latest wins);
- tags: user tags -> the run's tags as ``key=value``, all tags (``mlflow.*`` included) in
  ``metadata["imported"]["tags"]``; the run name -> the run's name; the experiment -> its project;
- the status: FINISHED -> finished, FAILED or KILLED -> failed;
- artifacts' files -> the artifact ``mlflow-<run id>`` (type ``mlflow-artifacts``).

The run keeps MLflow's run id; a run imported already is not imported again.
"""

from __future__ import annotations

import tempfile

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from .._run import UsageError
from ..artifacts import Artifact
from ._importer import ImportedRun, check_run_id, imported


def _experiments(client, name: str | None) -> list:
    if name is None:
        return client.search_experiments(view_type=ViewType.ALL)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL))
        raise UsageError(
            f"no MLflow experiment named {name!r} in this tracking store; it has: "
            f"{', '.join(map(repr, names)) or 'none'}"
        )
    return [exp]


def _runs(client, experiment_id: str):
    token = None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def import_runs(
    tracking_uri: str, root: str, experiment: str | None = None, project: str | None = None, on_run=None
) -> list[dict]:
    """Import the runs of ``experiment`` (every experiment when None) from ``tracking_uri`` into
    ``root``. Returns one dict per run: ``id``, ``name``, ``source``, ``rows``, ``skipped`` and
    ``status`` ("imported" or "exists"). Raises UsageError for an unknown experiment."""
    client = MlflowClient(tracking_uri=tracking_uri)
    results = []
    for exp in _experiments(client, experiment):
        for run in _runs(client, exp.experiment_id):
            result = _import_run(client, tracking_uri, exp, run, root, project)
            results.append(result)
            if on_run is not None:
                on_run(result)
    return results


def _import_run(client, tracking_uri, exp, run, root, project) -> dict:
    info, data = run.info, run.data
    run_id = check_run_id(info.run_id)
    if run_id is None:
        raise UsageError(f"MLflow run id {info.run_id!r} is not a valid trackside run id")
    result = {
        "id": run_id,
        "name": info.run_name or run_id,
        "source": f"{tracking_uri} {exp.name}/{info.run_id}",
        "rows": 0,
        "skipped": {},
    }
    if imported(root, run_id):
        result["status"] = "exists"
        return result
    rows: dict[int, list] = {}
    for key in sorted(data.metrics):
        for m in sorted(client.get_metric_history(info.run_id, key), key=lambda m: (m.step, m.timestamp)):
            row = rows.setdefault(int(m.step), [0, {}])
            row[0] = max(row[0], m.timestamp)
            row[1][key] = m.value
    user_tags = {k: v for k, v in data.tags.items() if not k.startswith("mlflow.")}
    source = {
        "from": "mlflow",
        "tracking_uri": tracking_uri,
        "experiment": exp.name,
        "run_id": info.run_id,
        "status": info.status,
        "tags": dict(data.tags),
        "started_at": info.start_time / 1000 if info.start_time else None,
        "ended_at": info.end_time / 1000 if info.end_time else None,
    }
    with ImportedRun(
        root,
        run_id=run_id,
        project=project or exp.name,
        name=info.run_name or None,
        config=dict(data.params),
        tags=[f"{k}={v}" for k, v in sorted(user_tags.items())],
        source=source,
    ) as out:
        for step in sorted(rows):
            t, values = rows[step]
            out.log(values, step, t / 1000)
        _artifacts(client, info.run_id, out)
        out.exit_code = 1 if info.status in ("FAILED", "KILLED") else 0
    result.update(rows=len(rows), status="imported")
    return result


def _artifacts(client, run_id: str, out: ImportedRun) -> None:
    if not client.list_artifacts(run_id):
        return
    with tempfile.TemporaryDirectory(prefix="trackside-mlflow-") as tmp:
        local = client.download_artifacts(run_id, "", tmp)
        art = Artifact(f"mlflow-{run_id}", type="mlflow-artifacts")
        art.add_dir(local)
        if art.entries:
            out.run.log_artifact(art)  # copies the files into the run root: tmp may go
