"""WSGI entry point: the dashboard under /conveyor, Django for everything else.

Wrapping the WSGI application (rather than a Django view) keeps the dashboard's streaming live
updates, cookies and CSRF checks exactly as when it runs alone.
"""

import os

from django.core.wsgi import get_wsgi_application
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from conveyor.web import create_app

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from mysite.jobs import jobs

django_app = get_wsgi_application()
dashboard = create_app(jobs)  # token from CONVEYOR_WEB_TOKEN, else generated and logged
application = DispatcherMiddleware(django_app, {"/conveyor": dashboard})
