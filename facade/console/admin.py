"""Administration: the users (admins: a page at a time, searched by email, each with a form
that sets its role) and the locations (listed to everyone, created by admins)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from facade.console.calls import ApiError, Caller, Refused, stubs
from facade.console.forms import Form
from facade.console.session import Session
from facade.console.web import Console
from invmesh.auth.v1 import auth_service_pb2 as auth_pb
from invmesh.inventory.v1 import inventory_service_pb2 as inventory_pb

AUTH = auth_pb.DESCRIPTOR.services_by_name["AuthService"].methods_by_name
INVENTORY = inventory_pb.DESCRIPTOR.services_by_name["InventoryService"].methods_by_name
ROLES = ("viewer", "staff", "admin")
PAGE_SIZE = 50
DONE = {"location": "Location created.", "role": "Role saved."}


def routes(console: Console) -> list[Route]:
    async def show(
        request: Request,
        session: Session,
        call: Caller,
        *,
        query: str = "",
        page_token: str = "",
        failed: str = "",
        error: ApiError | None = None,
        form: Form | None = None,
    ) -> Response:
        """The page; after a form was refused, with the refusal beside its fields. `query` and
        `page_token` choose the page of users (admins only)."""
        may_list_users = session.may(AUTH["ListUsers"])
        backends = stubs(request)
        locations = call(backends.inventory.ListLocations, inventory_pb.ListLocationsRequest(page_size=500))
        users = auth_pb.ListUsersResponse()
        if may_list_users:
            page_of_users = auth_pb.ListUsersRequest(page_size=PAGE_SIZE, q=query, page_token=page_token)
            places, users = await asyncio.gather(locations, call(backends.auth.ListUsers, page_of_users))
        else:
            places = await locations
        context = {
            "locations": places.locations,
            "users": users.users,
            "query": query,
            "page_token": page_token,
            "next_page_token": users.next_page_token,
            "first_page": not page_token,
            "roles": ROLES,
            "done": DONE.get(request.query_params.get("done", ""), ""),
            "failed": failed,
            "error": error,
            "form": form.values if form is not None else {},
            "may": {
                "list_users": may_list_users,
                "set_role": session.may(AUTH["SetUserRole"]),
                "create_location": session.may(INVENTORY["CreateLocation"]),
            },
        }
        return console.render(request, session, "admin.html", context, error.status if error else 200)

    async def page(request: Request, session: Session, call: Caller) -> Response:
        params = request.query_params
        return await show(
            request, session, call, query=params.get("q", "").strip(), page_token=params.get("page_token", "")
        )

    async def set_role(request: Request, session: Session, call: Caller, form: Form) -> Response:
        change = auth_pb.SetUserRoleRequest(email=form.text("email"), role=form.text("role"))
        query, page_token = form.text("q"), form.text("page_token")  # the page the form was on
        try:
            await call(stubs(request).auth.SetUserRole, change)
        except Refused as refusal:
            return await show(
                request,
                session,
                call,
                query=query,
                page_token=page_token,
                failed="role",
                error=refusal.error,
                form=form,
            )
        shown = {"done": "role", "q": query, "page_token": page_token}
        return RedirectResponse(
            "/console/admin?" + urlencode({name: value for name, value in shown.items() if value}),
            status_code=303,
        )

    async def create_location(request: Request, session: Session, call: Caller, form: Form) -> Response:
        location = inventory_pb.Location(code=form.text("code"), name=form.text("name"))
        try:
            await call(
                stubs(request).inventory.CreateLocation, inventory_pb.CreateLocationRequest(location=location)
            )
        except Refused as refusal:
            return await show(request, session, call, failed="location", error=refusal.error, form=form)
        return RedirectResponse("/console/admin?done=location", status_code=303)

    return [
        Route("/admin", console.page(page), methods=["GET"]),
        Route("/admin/roles", console.action(set_role), methods=["POST"]),
        Route("/admin/locations", console.action(create_location), methods=["POST"]),
    ]
