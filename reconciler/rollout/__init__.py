"""Canary → group → fleet: the pure decisions (decide), their record (db), heartbeats as reports
(reports), the controller that re-pins the index (controller), and the status document (status)."""
