package kreatest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"image"
	"image/color"
	"image/png"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// Result files. A completed job's result URLs point at the simulator
// itself, <base>/images/<uuid>.png or <base>/videos/<uuid>.mp4 as Krea's
// CDN spells them, and the simulator serves real files there: a valid PNG
// (a 64×64 gradient) or an MP4 box structure (ftyp, mdat). Config.ResultSize
// pads them to any size, streamed without being held in memory: a PNG with
// a private ancillary chunk that decoders skip, an MP4 with a larger mdat.
const (
	// ResultImagePrefix and ResultVideoPrefix are the paths of result files.
	ResultImagePrefix = "/images/"
	ResultVideoPrefix = "/videos/"
	// resultSide is the side of the result images, in pixels.
	resultSide = 64
	// minVideoSize is the default size of a result video: an ftyp box and
	// a small mdat box.
	minVideoSize = 1024
	// padChunkMax bounds one PNG padding chunk (the format allows 2³¹-1).
	padChunkMax = 1 << 30
)

// resultFile is a file the simulator serves at a result URL.
type resultFile struct {
	video bool
	seed  uint64
}

// resultBase is the base of a job's result URLs: Config.ResultsURL, else
// the address the submission reached the simulator on.
func (s *Server) resultBase(r *http.Request) string {
	if s.cfg.ResultsURL != "" {
		return strings.TrimSuffix(s.cfg.ResultsURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// newResultLocked registers a result file for job j and returns its URL.
func (s *Server) newResultLocked(j *simJob, video bool) string {
	id := uuid.New()
	name := id.String()
	f := resultFile{video: video, seed: binary.BigEndian.Uint64(id[:8]) ^ binary.BigEndian.Uint64(id[8:])}
	var p string
	if video {
		p = ResultVideoPrefix + name + ".mp4"
	} else {
		p = ResultImagePrefix + name + ".png"
	}
	s.results[p] = f
	return j.resultBase + p
}

// resultPath reports whether the request is for a result file.
func resultPath(p string) bool {
	return strings.HasPrefix(p, ResultImagePrefix) || strings.HasPrefix(p, ResultVideoPrefix)
}

// serveResult answers GET or HEAD of a result file. Like a CDN it needs no
// Authorization; Faults.ResultNotFound answers 404 and
// Faults.ResultLatency delays the answer.
func (s *Server) serveResult(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "Method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s.mu.Lock()
	f, ok := s.results[r.URL.Path]
	faults := s.faults
	if ok {
		s.resultGets[r.URL.Path]++
	}
	s.mu.Unlock()
	if faults.ResultLatency > 0 && !s.sleep(faults.ResultLatency, r.Context().Done()) {
		return
	}
	if !ok || faults.ResultNotFound {
		http.Error(w, "Not found", http.StatusNotFound)
		return
	}
	body := s.resultBody(f)
	w.Header().Set("Content-Length", strconv.FormatInt(body.size, 10))
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	if f.video {
		w.Header().Set("Content-Type", "video/mp4")
	} else {
		w.Header().Set("Content-Type", "image/png")
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	var out io.Writer = w
	if faults.ResultStallAfter > 0 {
		out = &stallWriter{w: w, left: faults.ResultStallAfter, stop: r.Context().Done(), s: s}
	}
	_ = body.writeTo(out)
}

// stallWriter passes left bytes on, then blocks until stop or the server
// closes.
type stallWriter struct {
	w    io.Writer
	left int64
	stop <-chan struct{}
	s    *Server
}

func (sw *stallWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= sw.left {
		sw.left -= int64(len(p))
		return sw.w.Write(p)
	}
	n, err := sw.w.Write(p[:sw.left])
	sw.left = 0
	if err != nil {
		return n, err
	}
	if f, ok := sw.w.(http.Flusher); ok {
		f.Flush()
	}
	select {
	case <-sw.stop:
	case <-sw.s.ctx.Done():
	}
	return n, errors.New("kreatest: result download stalled")
}

// ResultDownloads is how many times the result file at url (a URL the
// simulator gave out) was requested.
func (s *Server) ResultDownloads(url string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, n := range s.resultGets {
		if strings.HasSuffix(url, p) {
			return n
		}
	}
	return 0
}

// ResultFile writes the bytes served at url (a URL the simulator gave out)
// to w, as a test's reference for what a copy must hold. It reports false
// for a URL the simulator does not serve.
func (s *Server) ResultFile(url string, w io.Writer) (int64, bool, error) {
	s.mu.Lock()
	var f resultFile
	found := false
	for p, rf := range s.results {
		if strings.HasSuffix(url, p) {
			f, found = rf, true
			break
		}
	}
	s.mu.Unlock()
	if !found {
		return 0, false, nil
	}
	b := s.resultBody(f)
	cw := &countWriter{w: w}
	err := b.writeTo(cw)
	return cw.n, true, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// body is a result file ready to stream: a head, padding of pad bytes
// (framed as the format needs), and a tail.
type body struct {
	f          resultFile
	head, tail []byte
	pad        int64 // payload bytes of padding
	chunks     int64 // PNG chunks the padding is framed in
	size       int64
}

// resultBody lays out file f at the configured size.
func (s *Server) resultBody(f resultFile) body {
	if f.video {
		return videoBody(f, s.cfg.ResultSize)
	}
	return imageBody(f, s.cfg.ResultSize)
}

// imageBody is a PNG: signature, IHDR and IDAT of a small gradient, then
// padding in private ancillary "kbPd" chunks up to size, then IEND.
func imageBody(f resultFile, size int64) body {
	img := image.NewNRGBA(image.Rect(0, 0, resultSide, resultSide))
	r, g := uint8(f.seed), uint8(f.seed>>8)
	for y := range resultSide {
		for x := range resultSide {
			img.SetNRGBA(x, y, color.NRGBA{R: r + uint8(4*x), G: g + uint8(4*y), B: uint8(f.seed >> 16), A: 0xff})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img) // to memory: cannot fail
	b := buf.Bytes()
	const iend = 12 // the IEND chunk: length, type, CRC
	bd := body{f: f, head: b[:len(b)-iend], tail: b[len(b)-iend:], size: int64(len(b))}
	if extra := size - bd.size; extra >= 12 {
		// Each padding chunk costs 12 bytes of framing.
		bd.chunks = (extra + padChunkMax + 12 - 1) / (padChunkMax + 12)
		bd.pad = extra - 12*bd.chunks
		bd.size = size
	}
	return bd
}

// videoBody is an ISO base media file: an ftyp box (isom) and an mdat box
// whose payload pads the file to size (at least minVideoSize).
func videoBody(f resultFile, size int64) body {
	size = max(size, minVideoSize)
	ftyp := []byte{0, 0, 0, 24, 'f', 't', 'y', 'p', 'i', 's', 'o', 'm', 0, 0, 2, 0, 'i', 's', 'o', 'm', 'm', 'p', '4', '1'}
	var mdat []byte
	if payload := size - int64(len(ftyp)) - 8; payload+8 <= 0xffffffff {
		mdat = binary.BigEndian.AppendUint32(nil, uint32(payload+8))
		mdat = append(mdat, "mdat"...)
	} else { // 64-bit box size
		mdat = binary.BigEndian.AppendUint32(nil, 1)
		mdat = append(mdat, "mdat"...)
		mdat = binary.BigEndian.AppendUint64(mdat, uint64(payload+8))
	}
	head := append(ftyp, mdat...)
	return body{f: f, head: head, pad: size - int64(len(head)), size: size}
}

// writeTo streams the file, generating the padding from the file's seed
// 32 KiB at a time.
func (b body) writeTo(w io.Writer) error {
	if _, err := w.Write(b.head); err != nil {
		return err
	}
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], b.f.seed)
	rng := rand.NewChaCha8(seed)
	buf := make([]byte, 32<<10)
	fill := func(n int64, crc *uint32) error {
		for n > 0 {
			p := buf[:min(n, int64(len(buf)))]
			_, _ = rng.Read(p)
			if crc != nil {
				*crc = crc32.Update(*crc, crc32.IEEETable, p)
			}
			if _, err := w.Write(p); err != nil {
				return err
			}
			n -= int64(len(p))
		}
		return nil
	}
	if b.f.video {
		if err := fill(b.pad, nil); err != nil {
			return err
		}
	} else {
		left := b.pad
		for c := b.chunks; c > 0; c-- {
			n := (left + c - 1) / c // spread evenly: each at most padChunkMax
			var hdr [8]byte
			binary.BigEndian.PutUint32(hdr[:4], uint32(n))
			copy(hdr[4:], "kbPd")
			if _, err := w.Write(hdr[:]); err != nil {
				return err
			}
			crc := crc32.ChecksumIEEE(hdr[4:])
			if err := fill(n, &crc); err != nil {
				return err
			}
			if _, err := w.Write(binary.BigEndian.AppendUint32(nil, crc)); err != nil {
				return err
			}
			left -= n
		}
	}
	_, err := w.Write(b.tail)
	return err
}
