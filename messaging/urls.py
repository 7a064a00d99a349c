"""API routes of the messaging app (included under ``/api/v1/``)."""

from django.urls import path

from messaging import views

urlpatterns = [
    path("rooms", views.RoomsView.as_view(), name="rooms"),
    path("rooms/<str:room_id>/members", views.RoomMembersView.as_view()),
    path(
        "rooms/<str:room_id>/members/<str:member_id>",
        views.RoomMemberView.as_view(),
        name="room-member",
    ),
    path("rooms/<str:room_id>/devices", views.RoomDevicesView.as_view()),
    path("rooms/<str:room_id>/messages", views.RoomMessagesView.as_view()),
    path("devices/me/inbox", views.InboxView.as_view(), name="inbox"),
    path("devices/me/inbox/ack", views.InboxAckView.as_view(), name="inbox-ack"),
]
