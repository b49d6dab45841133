"""Which permission each RPC and action needs (docs/operations.md#api-keys). Permissions are independent flags."""

from __future__ import annotations

import enum


class Permission(enum.IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    DELETE = 4


ACTION_PERMISSIONS: dict[str, Permission] = {
    "info": Permission.NONE,
    "version": Permission.NONE,  # older dialect's `info`
    "sequence_create": Permission.WRITE,
    "session_create": Permission.WRITE,
    "session_finalize": Permission.WRITE,
    "topic_create": Permission.WRITE,
    "sequence_notification_create": Permission.WRITE,
    "topic_notification_create": Permission.WRITE,
    "sequence_delete": Permission.DELETE,
    "session_delete": Permission.DELETE,
    "topic_delete": Permission.DELETE,
    "sequence_notification_purge": Permission.DELETE,
    "topic_notification_purge": Permission.DELETE,
    "query": Permission.READ,
    "sequence_notification_list": Permission.READ,
    "topic_notification_list": Permission.READ,
    "topic_filter_clusterize": Permission.READ,
    "topic_filter_intersect": Permission.READ,
}

RPC_PERMISSIONS: dict[str, Permission] = {
    "get_flight_info": Permission.READ,
    "get_schema": Permission.READ,
    "list_flights": Permission.READ,
    "do_get": Permission.READ,
    "do_put": Permission.WRITE,
}


def camel(action: str) -> str:
    return "".join(part.capitalize() for part in action.split("_"))
