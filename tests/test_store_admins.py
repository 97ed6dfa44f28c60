"""The named admins' part of the store port (store/admin_accounts.py) on every engine,
in-process, through the port only: the same calls give the same answers on SQLite and
PostgreSQL."""

from __future__ import annotations

import pytest

from capgate.errors import Conflict, InvalidRequest, NotFound
from capgate.store.base import Store
from store_engines import MakeStore, make_store, run, run_two

__all__ = ["make_store"]


def test_admins_are_created_changed_and_deleted(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        made = await one.create_admin("lead", "team-admin", ("red",), "scrypt$1$2$3$s$h", "boss")
        assert (made.name, made.role, made.teams, made.status) == (
            "lead",
            "team-admin",
            ("red",),
            "active",
        )
        assert await two.get_admin("lead") == made
        assert await two.get_admin("nobody") is None
        with pytest.raises(Conflict):
            await two.create_admin("lead", "viewer", (), None)
        await two.create_admin("ann", "viewer", (), None)
        assert [a.name for a in await one.list_admins()] == ["ann", "lead"]
        await one.create_session(b"s" * 32, "lead", "tag", 3600)
        changed = await two.update_admin("lead", teams=("red", "blue"), actor="boss")
        assert changed.teams == ("red", "blue") and changed.password_hash == made.password_hash
        assert await one.get_session(b"s" * 32) is not None  # teams only: sessions stay
        await two.update_admin("lead", password_hash="scrypt$new", actor="lead")
        assert await one.get_session(b"s" * 32) is None  # a new password ends them
        assert (await one.get_admin("lead")).password_hash == "scrypt$new"  # type: ignore[union-attr]
        await one.update_admin("ann", status="disabled")
        assert (await two.get_admin("ann")).status == "disabled"  # type: ignore[union-attr]
        with pytest.raises(NotFound):
            await one.update_admin("nobody", role="owner")
        await one.delete_admin("ann", actor="boss")
        assert await two.get_admin("ann") is None
        with pytest.raises(NotFound):
            await one.delete_admin("ann")
        audit = await two.audit(20)
        assert [(a.action, a.actor) for a in audit[:5]] == [
            ("admin-delete", "boss"), ("admin-update", "admin"), ("admin-password", "lead"),
            ("admin-update", "boss"), ("admin-create", "admin"),
        ]  # fmt: skip
        assert all("scrypt" not in str(a.before) + str(a.after) for a in audit)

    run_two(make_store, test)


def test_tokens_are_found_by_hash_revoked_and_rotated(make_store: MakeStore) -> None:
    async def test(one: Store, two: Store) -> None:
        await one.create_admin("ops", "admin", (), None)
        with pytest.raises(NotFound):
            await one.create_admin_token("nobody", "t0", b"0" * 32, "cga-000", "", None)
        made = await one.create_admin_token("ops", "t1", b"a" * 32, "cga-aaa", "ci", 2e9, "boss")
        assert (made.admin, made.label, made.expires_at, made.revoked_at) == (
            "ops",
            "ci",
            2e9,
            None,
        )
        found = await two.find_admin_token(b"a" * 32)
        assert found is not None and found.token == made and not found.old
        assert await two.find_admin_token(b"z" * 32) is None
        rotated = await two.rotate_admin_token("ops", "t1", b"b" * 32, "cga-bbb", 60, "ops")
        assert rotated.prefix == "cga-bbb" and rotated.old_until is not None
        assert rotated.rotated_at is not None and rotated.old_until >= rotated.rotated_at + 60
        old, new = await one.find_admin_token(b"a" * 32), await one.find_admin_token(b"b" * 32)
        assert old is not None and old.old and new is not None and not new.old
        revoked = await one.revoke_admin_token("ops", "t1", "boss")
        assert revoked.revoked_at is not None
        with pytest.raises(InvalidRequest):
            await two.rotate_admin_token("ops", "t1", b"c" * 32, "cga-ccc", 0)
        with pytest.raises(NotFound):
            await two.revoke_admin_token("ops", "nope")
        await one.create_admin_token("ops", "t2", b"d" * 32, "cga-ddd", "", None)
        assert [t.id for t in await two.list_admin_tokens("ops")] == ["t2", "t1"]
        await two.delete_admin("ops")
        assert await one.find_admin_token(b"d" * 32) is None
        actions = [a.action for a in await one.audit(10)]
        assert actions[:5] == [
            "admin-delete", "admin-token", "admin-token-revoke", "admin-token-rotate",
            "admin-token",
        ]  # fmt: skip

    run_two(make_store, test)


def test_one_engine_alone(make_store: MakeStore) -> None:
    async def test(store: Store) -> None:
        await store.create_admin("solo", "owner", (), None)
        assert [a.name for a in await store.list_admins()] == ["solo"]

    run(make_store, test)
