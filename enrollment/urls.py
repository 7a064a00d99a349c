"""API routes of the enrollment app."""

from django.urls import path

from enrollment import views

urlpatterns = [
    path("invites", views.InviteListView.as_view(), name="invites"),
    path(
        "invites/<uuid:invite_id>/revoke",
        views.InviteRevokeView.as_view(),
        name="invite-revoke",
    ),
    path("enrollments", views.EnrollmentView.as_view(), name="enrollments"),
    path("auth/challenge", views.ChallengeView.as_view(), name="auth-challenge"),
    path("auth/token", views.TokenView.as_view(), name="auth-token"),
    path("devices", views.DeviceListView.as_view(), name="devices"),
    path("devices/me", views.DeviceMeView.as_view(), name="device-me"),
    path("devices/me/prekeys", views.PrekeysView.as_view(), name="device-prekeys"),
    path(
        "devices/<uuid:device_id>/approve",
        views.DeviceApproveView.as_view(),
        name="device-approve",
    ),
    path(
        "devices/<uuid:device_id>/revoke",
        views.DeviceRevokeView.as_view(),
        name="device-revoke",
    ),
    path(
        "members/<uuid:member_id>/prekey-bundles",
        views.PrekeyBundlesView.as_view(),
        name="prekey-bundles",
    ),
]
