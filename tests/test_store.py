import threading
import time

import pytest
import sqlalchemy

from app.errors import Conflict, NotFound
from app.jobs.store import JobStore
from app.jobs.tables import JobStatus


@pytest.fixture
def store(store_url):
    s = JobStore(store_url)
    yield s
    s.close()


def make(store, n=1):
    return [
        store.create_job(
            adapter=f"a{i}",
            base_model="tiny-bert",
            hyperparameters={},
            train_dataset="ds_x",
            validation_dataset=None,
            validation_split=0.1,
        )
        for i in range(n)
    ]


def test_claims_are_exclusive_across_processes_worth_of_connections(store_url):
    stores = [JobStore(store_url) for _ in range(4)]
    ids = {j.id for j in make(stores[0], 30)}
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(s, wid):
        while (job := s.claim_next(wid)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job exactly once
    for s in stores:
        s.close()


def test_claim_order_and_finish(store):
    first, second = make(store, 2)
    job = store.claim_next("w1")
    assert job.id == first.id and job.status == "running" and job.attempts == 1
    store.finish(
        job.id, "w1", JobStatus.succeeded, result_adapter="a0@v1", result_metrics={"accuracy": 1.0}, message="done"
    )
    done = store.get_job(job.id)
    assert done.status == "succeeded" and done.finished_at is not None and done.result_adapter == "a0@v1"
    # a worker that lost the job cannot finish it
    job2 = store.claim_next("w1")
    store.finish(job2.id, "intruder", JobStatus.failed, error=("x", "y"), message="no")
    assert store.get_job(job2.id).status == "running"


def test_cancel_queued_and_running(store):
    queued, running = make(store, 2)
    store.claim_next("w")  # takes `queued` (the older)
    assert store.get_job(queued.id).status == "running"
    assert store.request_cancel(running.id).status == "cancelled"
    assert store.heartbeat(queued.id, "w") is None
    assert store.request_cancel(queued.id).cancel_requested is True
    assert store.heartbeat(queued.id, "w") == "cancelled"  # the worker is told to stop
    with pytest.raises(Conflict):
        store.request_cancel(running.id)
    with pytest.raises(NotFound):
        store.request_cancel("job_nope")


def test_pause_and_resume(store):
    queued, running = make(store, 2)
    store.claim_next("w")  # takes `queued` (the older)
    # a queued job pauses at once, and is not claimed while paused
    assert store.request_pause(running.id).status == "paused"
    assert store.claim_next("w2") is None
    with pytest.raises(Conflict, match="paused"):
        store.request_pause(running.id)
    assert store.resume(running.id).status == "queued"
    # a running job is told to pause at its next check; the worker then records the pause, freeing itself
    assert store.request_pause(queued.id).status == "running"
    assert store.heartbeat(queued.id, "w") == "paused"
    store.pause(queued.id, "intruder")  # only the owning worker pauses it
    assert store.get_job(queued.id).status == "running"
    store.pause(queued.id, "w")
    paused = store.get_job(queued.id)
    assert paused.status == "paused" and paused.worker_id is None and paused.attempts == 0  # not an attempt
    assert store.requeue_stale(0.0, max_attempts=1) == []  # no lease on a paused job
    assert store.request_cancel(queued.id).status == "cancelled"  # a paused job cancels at once
    with pytest.raises(Conflict, match="cancelled, not paused"):
        store.resume(queued.id)
    # a pause asked and not yet taken is withdrawn by resume
    again = store.claim_next("w")
    assert again.id == running.id
    store.request_pause(running.id)
    assert store.resume(running.id).status == "running"
    assert store.heartbeat(running.id, "w") is None
    with pytest.raises(NotFound):
        store.request_pause("job_nope")
    messages = [e.message for e in store.events(running.id)]
    assert "Paused" in messages and "Pause withdrawn" in messages


def test_pagination_and_status_filter(store):
    jobs = make(store, 5)
    page, more = store.list_jobs(limit=2)
    assert [j.id for j in page] == [jobs[4].id, jobs[3].id] and more
    page2, more2 = store.list_jobs(limit=2, after=page[-1].id)
    assert [j.id for j in page2] == [jobs[2].id, jobs[1].id] and more2
    store.claim_next("w")
    running, _ = store.list_jobs(status=JobStatus.running)
    assert [j.id for j in running] == [jobs[0].id]


def test_stale_jobs_requeue_then_fail(store):
    (job,) = make(store, 1)
    store.claim_next("w")
    store.add_metrics(job.id, [{"kind": "train", "step": 1, "epoch": 0.1, "values": {"loss": 9.0}}])
    time.sleep(0.05)
    assert store.requeue_stale(0.01, max_attempts=2) == [job.id]
    assert store.get_job(job.id).status == "queued"
    assert len(store.metrics(job.id)) == 1  # kept: the next run resumes from its checkpoint and rewinds them
    assert store.requeue_stale(0.01, max_attempts=2) == []  # queued jobs are not touched
    store.claim_next("w2")
    time.sleep(0.05)
    store.requeue_stale(0.01, max_attempts=2)
    failed = store.get_job(job.id)
    assert failed.status == "failed" and failed.error_code == "worker_lost"


def test_a_dead_workers_jobs_are_released_at_once(store):
    a, b = make(store, 2)
    store.claim_next("host:1")
    store.claim_next("host:2")
    assert store.release_worker("host:1", max_attempts=3) == [a.id]  # no lease wait
    assert store.get_job(a.id).status == "queued" and store.get_job(b.id).status == "running"
    assert store.release_worker("host:1", max_attempts=3) == []
    store.claim_next("host:3")
    assert store.release_worker("host:3", max_attempts=2) == [a.id]
    assert store.get_job(a.id).error_code == "worker_lost"  # second loss at max_attempts=2: failed


def legacy_database(url: str, drop: tuple[str, ...] = ()) -> None:
    """A database as a release before migrations left it: the baseline tables (less `drop`, the columns an
    older release lacked), no alembic_version, and a job with a metric point and an event."""
    from sqlalchemy import create_engine, insert

    from app.jobs.baseline import BASELINE
    from app.jobs.tables import utcnow

    engine = create_engine(url)
    BASELINE.create_all(engine)
    with engine.begin() as conn:
        for column in drop:
            conn.execute(sqlalchemy.text(f"ALTER TABLE jobs DROP COLUMN {column}"))
    meta = sqlalchemy.MetaData()
    meta.reflect(engine)
    with engine.begin() as conn:
        values = dict(
            id="job_old",
            status="succeeded",
            adapter="a",
            base_model="tiny-bert",
            hyperparameters={"epochs": 1},
            train_dataset="ds_x",
            validation_split=0.1,
            created_at=utcnow(),
            step=5,
            total_steps=5,
            epoch=1.0,
            cancel_requested=False,
            attempts=1,
            result_adapter="a@v1",
        )
        conn.execute(insert(meta.tables["jobs"]).values(**values))
        conn.execute(
            insert(meta.tables["metric_points"]).values(
                job_id="job_old", kind="train", step=5, epoch=1.0, values={"loss": 0.5}, created_at=utcnow()
            )
        )
        conn.execute(
            insert(meta.tables["job_events"]).values(
                job_id="job_old", created_at=utcnow(), level="info", type="message", message="Saved adapter a@v1"
            )
        )
    engine.dispose()


@pytest.mark.parametrize("drop", [(), ("webhook_url", "estimated_finish", "samples_per_second", "init_from")])
def test_a_database_from_before_migrations_is_upgraded_keeping_every_row(tmp_path, drop):
    from app.jobs.migrate import current, head

    url = f"sqlite:///{tmp_path / 'old.db'}"
    legacy_database(url, drop)
    store = JobStore(url)
    assert current(store.engine) == head()
    old = store.get_job("job_old")
    assert old.status == "succeeded" and old.result_adapter == "a@v1" and old.pause_requested is None
    assert [p.values for p in store.metrics("job_old")] == [{"loss": 0.5}]
    assert [e.message for e in store.events("job_old")] == ["Saved adapter a@v1"]
    job = store.create_job(
        adapter="b",
        base_model="tiny-bert",
        hyperparameters={},
        train_dataset="ds_x",
        validation_dataset=None,
        validation_split=0.1,
        webhook_url="http://127.0.0.1:9/x",
        suffix="s",
        user_metadata={"k": "v"},
    )
    again = store.get_job(job.id)
    assert again.webhook_url == "http://127.0.0.1:9/x" and again.user_metadata == {"k": "v"}
    store.close()
    assert current(JobStore(url).engine) == head()  # opening it again changes nothing


def test_the_migrations_arrive_at_the_schema_the_models_define(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from app.jobs.tables import Base

    url = f"sqlite:///{tmp_path / 'migrated.db'}"
    legacy_database(url)  # from the baseline through every migration, not create_all
    JobStore(url).close()
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_metrics_and_events_persist(store_url):
    url = store_url
    s = JobStore(url)
    (job,) = make(s, 1)
    s.add_metrics(job.id, [{"kind": "train", "step": 1, "epoch": 0.5, "values": {"loss": 0.7}}])
    s.add_event(job.id, "hello", type="message")
    s.close()
    again = JobStore(url)
    assert [p.values for p in again.metrics(job.id)] == [{"loss": 0.7}]
    assert [e.message for e in again.events(job.id)][-1] == "hello"
    assert again.get_job(job.id).created_at.tzinfo is not None
    again.close()


def test_stale_job_with_cancel_requested_is_cancelled_not_requeued(store):
    (job,) = make(store, 1)
    store.claim_next("w")
    store.request_cancel(job.id)
    time.sleep(0.05)
    store.requeue_stale(0.01, max_attempts=3)
    assert store.get_job(job.id).status == "cancelled"


def test_a_worker_that_lost_its_lease_no_longer_owns_the_job(store):
    (job,) = make(store, 1)
    store.claim_next("w1")
    time.sleep(0.05)
    store.requeue_stale(0.01, max_attempts=3)
    store.claim_next("w2")
    assert not store.owns(job.id, "w1") and store.owns(job.id, "w2")
    assert store.heartbeat(job.id, "w1") == "lost"  # w1 is told to stop, and why


def test_a_database_away_for_a_moment_is_waited_out_and_a_longer_outage_is_store_unavailable(store, monkeypatch):
    """The retries, without a real outage: a call whose first tries fail as a dropped connection does."""
    from sqlalchemy.exc import OperationalError

    from app.errors import StoreUnavailable

    real = store._session
    failures = {"left": 2}

    def flaky():
        if failures["left"]:
            failures["left"] -= 1
            raise OperationalError(
                "SELECT 1", {}, Exception("server closed the connection"), connection_invalidated=True
            )
        return real.begin()

    monkeypatch.setattr(store, "_session", type("S", (), {"begin": staticmethod(flaky)})())
    (job,) = make(store, 1)  # created once although its first two tries failed
    assert [j.id for j in store.list_jobs()[0]] == [job.id]
    failures["left"] = 10**6
    store.retry_seconds = 0.5
    with pytest.raises(StoreUnavailable) as e:
        store.get_job(job.id)
    assert e.value.status_code == 503
