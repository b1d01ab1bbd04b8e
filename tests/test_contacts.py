"""Contacts: made once per address, found again, and a creator racing on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, func, select

from maild.app import App
from maild.db import queries
from maild.db.models import Contact

postgres_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def contact_count(app: App) -> int:
    with app.db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Contact)) or 0)


def test_contacts_are_created_once_and_found_again_in_any_case(app: App) -> None:
    now = app.clock.now()
    with app.db.begin() as conn:
        first = queries.contacts_for(conn, {"Ann@X.example": "Ann", "bob@x.example": ""}, now)
    with app.db.begin() as conn:
        again = queries.contacts_for(conn, {"ann@x.example": "", "cy@x.example": "Cy"}, now)
    assert set(first) == {"ann@x.example", "bob@x.example"}
    assert again["ann@x.example"] == first["ann@x.example"]
    assert len({*first.values(), *again.values()}) == 3
    assert contact_count(app) == 3


def test_what_was_looked_up_is_not_asked_again(app: App) -> None:
    now = app.clock.now()
    with app.db.begin() as conn:
        ann = queries.contacts_for(conn, {"ann@x.example": "Ann"}, now)["ann@x.example"]
    asked: list[str] = []
    with app.db.begin() as conn:
        looked_up = queries.look_up_contacts(conn, ["Ann@X.example", "Dan@X.example"])
        assert looked_up == {"ann@x.example": ann, "dan@x.example": None}

        def counting(*args: object) -> None:
            asked.append(str(args[2]))

        event.listen(conn, "before_cursor_execute", counting)
        found = queries.contacts_for(
            conn, {"ann@x.example": "", "dan@x.example": "Dan"}, now, looked_up=looked_up
        )
    assert found["ann@x.example"] == ann
    assert contact_count(app) == 2
    # Only Dan's contact was written; nobody was looked up a second time.
    assert [statement.split()[0] for statement in asked] == ["INSERT"]


@postgres_only
def test_a_contact_another_transaction_creates_meanwhile_is_found_not_duplicated(
    app: App,
) -> None:
    now = app.clock.now()
    found: list[dict[str, int]] = []
    with app.db.begin() as other:
        # Another instance creates the contact and has not committed yet: our insert
        # waits for it, then skips the address, and must still come back with its id.
        theirs = queries.contacts_for(other, {"race@x.example": ""}, now)

        def ours() -> None:
            with app.db.begin() as conn:
                found.append(
                    queries.contacts_for(conn, {"race@x.example": "", "me@x.example": ""}, now)
                )

        racer = threading.Thread(target=ours)
        racer.start()
        racer.join(0.5)
        assert racer.is_alive()  # waiting on the other transaction's row
    racer.join(30)
    assert found and found[0]["race@x.example"] == theirs["race@x.example"]
    assert contact_count(app) == 2
