package kreatest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"image/png"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kreabus/kreabus/pkg/krea"
	"github.com/kreabus/kreabus/pkg/krea/kreatest"
)

// completedURL submits one job on path and returns its result URL.
func completedURL(t *testing.T, srv *kreatest.Server, path string) string {
	t.Helper()
	res, err := srv.NewClient().Submit(context.Background(), path, json.RawMessage(`{"prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	waitStatus(t, srv, res.Job.JobID, krea.StatusCompleted)
	j, _ := srv.Job(res.Job.JobID)
	if j.Result == nil || len(j.Result.URLs) != 1 {
		t.Fatalf("result %+v", j.Result)
	}
	return j.Result.URLs[0]
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestResultFilesAreReal(t *testing.T) {
	srv := newSim(t, kreatest.Config{QueueTime: -1, RunTime: -1})
	img := completedURL(t, srv, fluxPath)
	if !strings.HasPrefix(img, srv.URL+kreatest.ResultImagePrefix) || !strings.HasSuffix(img, ".png") {
		t.Fatalf("image URL %s", img)
	}
	resp, b := get(t, img)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" || resp.Header.Get("Content-Length") != strconv.Itoa(len(b)) {
		t.Fatalf("GET %s: %d %v (%d bytes)", img, resp.StatusCode, resp.Header, len(b))
	}
	pic, err := png.Decode(bytes.NewReader(b))
	if err != nil || pic.Bounds().Dx() != 64 {
		t.Fatalf("not a 64x64 PNG: %v", err)
	}
	_, again := get(t, img)
	if !bytes.Equal(b, again) {
		t.Error("the same URL served different bytes")
	}
	var ref bytes.Buffer
	if n, ok, err := srv.ResultFile(img, &ref); !ok || err != nil || n != int64(len(b)) || !bytes.Equal(ref.Bytes(), b) {
		t.Errorf("ResultFile = %d, %v, %v", n, ok, err)
	}
	if n := srv.ResultDownloads(img); n != 2 {
		t.Errorf("ResultDownloads = %d, want 2", n)
	}

	vid := completedURL(t, srv, "/generate/video/kling/kling-2.1")
	resp, b = get(t, vid)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "video/mp4" || len(b) != 1024 ||
		string(b[4:8]) != "ftyp" || string(b[28:32]) != "mdat" {
		t.Fatalf("GET %s: %d %v %q", vid, resp.StatusCode, resp.Header, b[:min(len(b), 32)])
	}

	if resp, _ := get(t, srv.URL+"/images/00000000-0000-0000-0000-000000000000.png"); resp.StatusCode != 404 {
		t.Errorf("unknown result: %d", resp.StatusCode)
	}
	if resp, err := http.Post(img, "text/plain", nil); err != nil || resp.StatusCode != 405 {
		t.Errorf("POST result: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}

// TestResultSize pads files to exactly the configured size; the PNG still
// decodes, and the bytes are the same on every request.
func TestResultSize(t *testing.T) {
	const size = 3<<20 + 7
	srv := newSim(t, kreatest.Config{QueueTime: -1, RunTime: -1, ResultSize: size})
	for _, path := range []string{fluxPath, "/generate/video/kling/kling-2.1"} {
		u := completedURL(t, srv, path)
		resp, b := get(t, u)
		if resp.StatusCode != 200 || len(b) != size || resp.ContentLength != size {
			t.Fatalf("%s: %d, %d bytes, Content-Length %d", u, resp.StatusCode, len(b), resp.ContentLength)
		}
		if strings.HasSuffix(u, ".png") {
			if _, err := png.Decode(bytes.NewReader(b)); err != nil {
				t.Errorf("padded PNG does not decode: %v", err)
			}
		}
		_, again := get(t, u)
		if sha256.Sum256(b) != sha256.Sum256(again) {
			t.Errorf("%s changed between requests", u)
		}
	}
}

func TestResultFaultsAndBase(t *testing.T) {
	srv := newSim(t, kreatest.Config{QueueTime: -1, RunTime: -1, ResultsURL: "https://cdn.example.test/"})
	u := completedURL(t, srv, fluxPath)
	if !strings.HasPrefix(u, "https://cdn.example.test/images/") {
		t.Fatalf("URL %s ignores ResultsURL", u)
	}
	local := srv.URL + strings.TrimPrefix(u, "https://cdn.example.test")
	srv.SetFaults(kreatest.Faults{ResultNotFound: true})
	if resp, _ := get(t, local); resp.StatusCode != 404 {
		t.Errorf("ResultNotFound: %d", resp.StatusCode)
	}
	srv.SetFaults(kreatest.Faults{ResultLatency: 200 * time.Millisecond})
	start := time.Now()
	if resp, _ := get(t, local); resp.StatusCode != 200 || time.Since(start) < 200*time.Millisecond {
		t.Errorf("ResultLatency: %d after %v", resp.StatusCode, time.Since(start))
	}
	srv.SetFaults(kreatest.Faults{ResultStallAfter: 100})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, local, nil)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(b) != 100 || err == nil {
			t.Errorf("ResultStallAfter: read %d bytes, err %v", len(b), err)
		}
	}
	if _, err := kreatest.New(kreatest.Config{ResultsURL: "ftp://x"}); err == nil {
		t.Error("ftp ResultsURL accepted")
	}
	if _, err := kreatest.New(kreatest.Config{ResultSize: -1}); err == nil {
		t.Error("negative ResultSize accepted")
	}
}
