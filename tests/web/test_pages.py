"""The HTML pages, including the no-JavaScript flow (form POST -> job page that refreshes itself)."""

from __future__ import annotations

import re
import time

from service_support import POLL_TIMEOUT


def test_index_offers_file_drop_and_camera(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert '<form id="upload-form" action="/jobs" method="post" enctype="multipart/form-data"' in html
    assert 'capture="user"' in html and 'name="file"' in html and 'id="drop-zone"' in html
    assert "/static/app.js" in html
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


def test_form_flow_without_javascript(client, astronaut_jpeg):
    response = client.post("/jobs", files={"file": ("me.jpg", astronaut_jpeg, "image/jpeg")}, follow_redirects=False)
    assert response.status_code == 303
    job_page = response.headers["location"]
    assert re.fullmatch(r"/jobs/[A-Za-z0-9_-]{22}", job_page)
    job_id = job_page.rsplit("/", 1)[1]

    deadline = time.monotonic() + POLL_TIMEOUT
    while True:
        html = client.get(job_page).text
        if 'data-status="finished"' in html:
            break
        assert 'data-status="failed"' not in html
        assert '<meta http-equiv="refresh"' in html  # the page reloads itself while waiting
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert '<meta http-equiv="refresh"' not in html
    assert f'src="/api/v1/jobs/{job_id}/result"' in html and f'src="/api/v1/jobs/{job_id}/input"' in html
    assert f'href="/api/v1/jobs/{job_id}/result?download=1"' in html

    deleted = client.post(f"/jobs/{job_id}/delete", follow_redirects=False)
    assert deleted.status_code == 303
    assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert "deleted" in client.get(deleted.headers["location"]).text


def test_form_flow_failure_is_explained(client, coffee_jpeg):
    job_page = client.post(
        "/jobs", files={"file": ("cup.jpg", coffee_jpeg, "image/jpeg")}, follow_redirects=False
    ).headers["location"]
    deadline = time.monotonic() + POLL_TIMEOUT
    while 'data-status="failed"' not in (html := client.get(job_page).text):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert "No face found in the photo." in html


def test_form_errors_are_shown_on_the_page(client):
    response = client.post("/jobs", files={"file": ("notes.txt", b"just text" * 20, "text/plain")})
    assert response.status_code == 415
    assert "The file is not a JPEG, PNG, WebP, HEIC or AVIF image." in response.text
    assert 'id="upload-form"' in response.text  # the form is there to try again
    missing = client.post("/jobs", data={"other": "x"}, files={"nothing": ("", b"", "application/octet-stream")})
    assert missing.status_code == 422 and "No photo was uploaded" in missing.text
    unknown = client.get("/jobs/AAAAAAAAAAAAAAAAAAAAAA")
    assert unknown.status_code == 404 and "No such job" in unknown.text
