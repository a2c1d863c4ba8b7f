"""Django's own pages. /conveyor/ never reaches Django: mysite.wsgi routes it to the dashboard."""

from django.http import HttpRequest, HttpResponse
from django.urls import path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django. The job dashboard is at /conveyor/.")


urlpatterns = [path("", home)]
