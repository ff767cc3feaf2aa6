// Command zconv-interop drives the real containers/image and containers/storage
// libraries for zconv's interop tests. Every subcommand prints exactly one JSON
// object on stdout; errors print {"error": "..."} and exit 1.
//
//	copy SRC DST [--all] [--creds U:P] [--cert-dir D] [--tls-verify]
//	    copy an image between transports (oci:DIR:TAG, docker://HOST/REPO:TAG, ...)
//	    without changing any blob (PreserveDigests).
//	pull docker://HOST/REPO:TAG --root DIR [--creds U:P] [--cert-dir D] [--tls-verify] [--log FILE]
//	    pull into a containers-storage store (overlay, partial pulls enabled) under DIR,
//	    as podman does, and report per layer what the zstd:chunked differ did,
//	    read from the libraries' own debug log.
//	compress TAR --out BLOB [--level N]
//	    run the reference zstd:chunked writer on a tar.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.podman.io/image/v5/copy"
	"go.podman.io/image/v5/manifest"
	"go.podman.io/image/v5/signature"
	istorage "go.podman.io/image/v5/storage"
	"go.podman.io/image/v5/transports/alltransports"
	"go.podman.io/image/v5/types"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/chunked/compressor"
	"go.podman.io/storage/pkg/reexec"
	stypes "go.podman.io/storage/types"
)

// ---------------------------------------------------------------------------
// output helpers

func emit(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(os.Stderr, "zconv-interop: writing JSON: %v\n", err)
		os.Exit(1)
	}
}

func fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	emit(map[string]string{"error": msg})
	fmt.Fprintln(os.Stderr, "zconv-interop: "+msg)
	os.Exit(1)
}

// args is a tiny flag parser: positional arguments plus --name value / --flag.
type args struct {
	pos   []string
	opts  map[string]string
	flags map[string]bool
}

func parseArgs(in []string, valued, boolean []string) args {
	a := args{opts: map[string]string{}, flags: map[string]bool{}}
	isValued := map[string]bool{}
	for _, v := range valued {
		isValued[v] = true
	}
	isBool := map[string]bool{}
	for _, b := range boolean {
		isBool[b] = true
	}
	for i := 0; i < len(in); i++ {
		s := in[i]
		if !strings.HasPrefix(s, "--") {
			a.pos = append(a.pos, s)
			continue
		}
		name, val, hasVal := strings.Cut(s[2:], "=")
		switch {
		case isValued[name]:
			if !hasVal {
				if i+1 >= len(in) {
					fail("option --%s needs a value", name)
				}
				i++
				val = in[i]
			}
			a.opts[name] = val
		case isBool[name]:
			b := true
			if hasVal {
				var err error
				if b, err = strconv.ParseBool(val); err != nil {
					fail("option --%s: %v", name, err)
				}
			}
			a.flags[name] = b
		default:
			fail("unknown option --%s", name)
		}
	}
	return a
}

// ---------------------------------------------------------------------------
// debug log capture

// logHook keeps every log entry of the libraries, in order.
type logHook struct {
	mu      sync.Mutex
	entries []string
	file    io.Writer
}

func (h *logHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h *logHook) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.entries = append(h.entries, e.Message)
	if h.file != nil {
		fmt.Fprintf(h.file, "%s %s %s\n", e.Time.Format(time.RFC3339Nano), e.Level, e.Message)
	}
	return nil
}

func (h *logHook) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.entries...)
}

func captureLogs(logFile string) *logHook {
	h := &logHook{}
	if logFile != "" {
		f, err := os.Create(logFile)
		if err != nil {
			fail("creating log file %s: %v", logFile, err)
		}
		h.file = f
	}
	logrus.SetLevel(logrus.DebugLevel)
	logrus.SetOutput(io.Discard) // everything goes through the hook
	logrus.AddHook(h)
	return h
}

// ---------------------------------------------------------------------------
// shared setup

func systemContext(a args, tmp string) *types.SystemContext {
	sys := &types.SystemContext{
		// Keep the host's configuration out of the tests.
		SystemRegistriesConfPath:    filepath.Join(tmp, "registries.conf"),
		SystemRegistriesConfDirPath: filepath.Join(tmp, "registries.conf.d"),
		AuthFilePath:                filepath.Join(tmp, "auth.json"),
		BlobInfoCacheDir:            filepath.Join(tmp, "blob-info-cache"),
		SignaturePolicyPath:         filepath.Join(tmp, "policy.json"),
		RegistriesDirPath:           filepath.Join(tmp, "registries.d"),
	}
	// An empty registries.conf: no mirrors, no search registries, no credential helpers.
	if err := os.WriteFile(sys.SystemRegistriesConfPath, []byte("# empty\n"), 0o600); err != nil {
		fail("writing %s: %v", sys.SystemRegistriesConfPath, err)
	}
	if !a.flags["tls-verify"] {
		// Also lets c/image fall back to plain http, as for podman --tls-verify=false.
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolTrue
		sys.OCIInsecureSkipTLSVerify = true
	} else {
		sys.DockerInsecureSkipTLSVerify = types.OptionalBoolFalse
	}
	if d := a.opts["cert-dir"]; d != "" {
		sys.DockerCertPath = d
	}
	if c := a.opts["creds"]; c != "" {
		user, pass, ok := strings.Cut(c, ":")
		if !ok {
			fail("--creds must be USER:PASSWORD")
		}
		sys.DockerAuthConfig = &types.DockerAuthConfig{Username: user, Password: pass}
	}
	return sys
}

func policyContext() *signature.PolicyContext {
	pc, err := signature.NewPolicyContext(&signature.Policy{
		Default: signature.PolicyRequirements{signature.NewPRInsecureAcceptAnything()},
	})
	if err != nil {
		fail("creating signature policy: %v", err)
	}
	return pc
}

func mustTempDir(base string) string {
	d, err := os.MkdirTemp(base, "zconv-interop-")
	if err != nil {
		fail("creating temporary directory: %v", err)
	}
	return d
}

// ---------------------------------------------------------------------------
// copy

func cmdCopy(argv []string) {
	a := parseArgs(argv, []string{"creds", "cert-dir", "log"}, []string{"all", "tls-verify"})
	if len(a.pos) != 2 {
		fail("usage: copy SRC DST [--all] [--creds U:P] [--cert-dir D] [--tls-verify] [--log FILE]")
	}
	captureLogs(a.opts["log"])
	tmp := mustTempDir("")
	defer os.RemoveAll(tmp)

	src, err := alltransports.ParseImageName(a.pos[0])
	if err != nil {
		fail("parsing source %s: %v", a.pos[0], err)
	}
	dst, err := alltransports.ParseImageName(a.pos[1])
	if err != nil {
		fail("parsing destination %s: %v", a.pos[1], err)
	}
	sys := systemContext(a, tmp)
	pc := policyContext()
	defer pc.Destroy()

	opts := &copy.Options{
		SourceCtx:       sys,
		DestinationCtx:  sys,
		ReportWriter:    io.Discard,
		PreserveDigests: true, // fail rather than recompress or rewrite anything
	}
	if a.flags["all"] {
		opts.ImageListSelection = copy.CopyAllImages
	}
	start := time.Now()
	man, err := copy.Image(context.Background(), pc, dst, src, opts)
	if err != nil {
		fail("copy %s -> %s: %v", a.pos[0], a.pos[1], err)
	}
	sum := sha256.Sum256(man)
	emit(map[string]any{
		"source":          a.pos[0],
		"destination":     a.pos[1],
		"manifest_digest": "sha256:" + hex.EncodeToString(sum[:]),
		"manifest_type":   manifest.GuessMIMEType(man),
		"elapsed_seconds": time.Since(start).Seconds(),
	})
}

// ---------------------------------------------------------------------------
// pull

type layerReport struct {
	Index              int               `json:"index"`
	Digest             string            `json:"digest"`
	Size               int64             `json:"size"`
	MediaType          string            `json:"media_type"`
	Annotations        map[string]string `json:"annotations,omitempty"`
	HasZstdChunkedTOC  bool              `json:"has_zstd_chunked_toc"`
	Differ             string            `json:"differ"` // "zstd:chunked", "estargz", "convert" or ""
	DifferError        string            `json:"differ_error,omitempty"`
	Partial            bool              `json:"partial"`  // "Retrieved partial blob"
	Fallback           bool              `json:"fallback"` // fell back to a full download
	FallbackReason     string            `json:"fallback_reason,omitempty"`
	Reused             bool              `json:"reused"` // "Skipping blob ... (already present)"
	MissingBytes       *int64            `json:"missing_bytes"`
	TotalBytes         *int64            `json:"total_bytes"`
	LayerID            string            `json:"layer_id,omitempty"`
	DiffDir            string            `json:"diff_dir,omitempty"`
	UncompressedDigest string            `json:"uncompressed_digest,omitempty"`
	TOCDigest          string            `json:"toc_digest,omitempty"`
}

var (
	reChecking    = regexp.MustCompile(`^Checking if we can reuse blob (sha256:[0-9a-f]{64})`)
	reSkipping    = regexp.MustCompile(`^Skipping blob (sha256:[0-9a-f]{64}) \(already present\)`)
	reCreated     = regexp.MustCompile(`^Created (zstd:chunked|eStargz) differ for blob "(sha256:[0-9a-f]{64})"`)
	reCreatedConv = regexp.MustCompile(`^Created differ to convert blob "(sha256:[0-9a-f]{64})"`)
	reCouldNot    = regexp.MustCompile(`^Could not create (zstd:chunked|estargz) differ for blob "(sha256:[0-9a-f]{64})": (.*)$`)
	reMissing     = regexp.MustCompile(`^Missing (\d+) bytes out of (\d+) `)
	reRetrieved   = regexp.MustCompile(`^Retrieved partial blob (sha256:[0-9a-f]{64})`)
	reFailed      = regexp.MustCompile(`^Failed to retrieve partial blob: (.*)$`)
)

// interesting says which log lines go into the JSON report (all go to --log).
var interesting = regexp.MustCompile(`differ|partial|Missing|Skipping blob|Checking if we can reuse|image ID|DiffID|TOC`)

func attribute(layers []*layerReport, msgs []string) {
	byDigest := map[string]*layerReport{}
	for _, l := range layers {
		if _, dup := byDigest[l.Digest]; !dup {
			byDigest[l.Digest] = l
		}
	}
	var cur *layerReport // layers are copied one at a time (MaxParallelDownloads=1)
	set := func(d string) *layerReport {
		if l := byDigest[d]; l != nil {
			cur = l
		}
		return cur
	}
	for _, m := range msgs {
		switch {
		case reChecking.MatchString(m):
			set(reChecking.FindStringSubmatch(m)[1])
		case reSkipping.MatchString(m):
			if l := set(reSkipping.FindStringSubmatch(m)[1]); l != nil {
				l.Reused = true
			}
		case reCreated.MatchString(m):
			sm := reCreated.FindStringSubmatch(m)
			if l := set(sm[2]); l != nil {
				l.Differ = strings.ToLower(sm[1])
			}
		case reCreatedConv.MatchString(m):
			if l := set(reCreatedConv.FindStringSubmatch(m)[1]); l != nil {
				l.Differ = "convert"
			}
		case reCouldNot.MatchString(m):
			sm := reCouldNot.FindStringSubmatch(m)
			if l := set(sm[2]); l != nil {
				l.DifferError = sm[3]
			}
		case reMissing.MatchString(m):
			sm := reMissing.FindStringSubmatch(m)
			if cur != nil {
				miss, _ := strconv.ParseInt(sm[1], 10, 64)
				tot, _ := strconv.ParseInt(sm[2], 10, 64)
				cur.MissingBytes, cur.TotalBytes = &miss, &tot
			}
		case reRetrieved.MatchString(m):
			if l := set(reRetrieved.FindStringSubmatch(m)[1]); l != nil {
				l.Partial = true
			}
		case reFailed.MatchString(m):
			if cur != nil {
				cur.Fallback = true
				cur.FallbackReason = reFailed.FindStringSubmatch(m)[1]
			}
		}
	}
}

func cmdPull(argv []string) {
	a := parseArgs(argv, []string{"root", "creds", "cert-dir", "log", "name"}, []string{"tls-verify"})
	if len(a.pos) != 1 || a.opts["root"] == "" {
		fail("usage: pull docker://HOST/REPO:TAG --root DIR [--name NAME] [--creds U:P] [--cert-dir D] [--tls-verify] [--log FILE]")
	}
	srcName := a.pos[0]
	root, err := filepath.Abs(a.opts["root"])
	if err != nil {
		fail("--root: %v", err)
	}
	hook := captureLogs(a.opts["log"])
	tmp := filepath.Join(root, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		fail("creating %s: %v", tmp, err)
	}
	tmp = mustTempDir(tmp)
	defer os.RemoveAll(tmp)

	src, err := alltransports.ParseImageName(srcName)
	if err != nil {
		fail("parsing source %s: %v", srcName, err)
	}
	graphRoot := filepath.Join(root, "graph")
	store, err := storage.GetStore(stypes.StoreOptions{
		RunRoot:         filepath.Join(root, "run"),
		GraphRoot:       graphRoot,
		GraphDriverName: "overlay",
		PullOptions: map[string]string{
			"enable_partial_images": "true",
			"use_hard_links":        "true",
		},
	})
	if err != nil {
		fail("opening containers-storage store under %s (overlay driver): %v", root, err)
	}
	shutdown := func() {
		if _, err := store.Shutdown(true); err != nil {
			fmt.Fprintf(os.Stderr, "zconv-interop: shutting the store down: %v\n", err)
		}
	}

	name := a.opts["name"]
	if name == "" {
		if src.DockerReference() == nil {
			shutdown()
			fail("source %s has no docker reference; pass --name", srcName)
		}
		name = src.DockerReference().String()
	}
	dst, err := istorage.Transport.ParseStoreReference(store, name)
	if err != nil {
		shutdown()
		fail("storage reference %s: %v", name, err)
	}
	sys := systemContext(a, tmp)
	pc := policyContext()
	defer pc.Destroy()

	start := time.Now()
	man, err := copy.Image(context.Background(), pc, dst, src, &copy.Options{
		SourceCtx:            sys,
		DestinationCtx:       sys,
		ReportWriter:         io.Discard,
		MaxParallelDownloads: 1, // one layer at a time, so untagged log lines belong to the current layer
	})
	elapsed := time.Since(start).Seconds()
	msgs := hook.messages()
	if err != nil {
		shutdown()
		fail("pull %s into %s: %v", srcName, root, err)
	}

	mtype := manifest.GuessMIMEType(man)
	m, err := manifest.FromBlob(man, mtype)
	if err != nil {
		shutdown()
		fail("parsing the pulled manifest: %v", err)
	}
	var layers []*layerReport
	for i, li := range m.LayerInfos() {
		_, hasTOC := li.Annotations["io.github.containers.zstd-chunked.manifest-checksum"]
		layers = append(layers, &layerReport{
			Index: i, Digest: li.Digest.String(), Size: li.Size, MediaType: li.MediaType,
			Annotations: li.Annotations, HasZstdChunkedTOC: hasTOC,
		})
	}
	attribute(layers, msgs)

	img, err := store.Image(name)
	if err != nil {
		shutdown()
		fail("looking up pulled image %s: %v", name, err)
	}
	// Walk the image's layer chain from the top and match it to the manifest, bottom-up.
	var chain []*storage.Layer
	for id := img.TopLayer; id != ""; {
		l, err := store.Layer(id)
		if err != nil {
			shutdown()
			fail("looking up layer %s: %v", id, err)
		}
		chain = append([]*storage.Layer{l}, chain...)
		id = l.Parent
	}
	if len(chain) == len(layers) {
		for i, l := range chain {
			layers[i].LayerID = l.ID
			layers[i].UncompressedDigest = l.UncompressedDigest.String()
			layers[i].TOCDigest = l.TOCDigest.String()
			layers[i].DiffDir = filepath.Join(graphRoot, "overlay", l.ID, "diff")
		}
	}

	var missing, total int64
	for _, l := range layers {
		if l.MissingBytes != nil {
			missing += *l.MissingBytes
			total += *l.TotalBytes
		}
	}
	var relevant []string
	for _, s := range msgs {
		if interesting.MatchString(s) {
			relevant = append(relevant, s)
		}
	}
	shutdown()

	sum := sha256.Sum256(man)
	emit(map[string]any{
		"source":          srcName,
		"name":            name,
		"root":            root,
		"graph_root":      graphRoot,
		"image_id":        img.ID,
		"config_digest":   m.ConfigInfo().Digest.String(),
		"manifest_digest": "sha256:" + hex.EncodeToString(sum[:]),
		"manifest_type":   mtype,
		"layer_count":     len(chain),
		"layers":          layers,
		"missing_bytes":   missing,
		"total_bytes":     total,
		"elapsed_seconds": elapsed,
		"log":             relevant,
	})
}

// ---------------------------------------------------------------------------
// compress

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func cmdCompress(argv []string) {
	a := parseArgs(argv, []string{"out", "level"}, nil)
	if len(a.pos) != 1 || a.opts["out"] == "" {
		fail("usage: compress TAR --out BLOB [--level N]")
	}
	var level *int
	if s := a.opts["level"]; s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			fail("--level: %v", err)
		}
		level = &n
	}
	in, err := os.Open(a.pos[0])
	if err != nil {
		fail("opening %s: %v", a.pos[0], err)
	}
	defer in.Close()
	outPath := a.opts["out"]
	tmpOut, err := os.CreateTemp(filepath.Dir(outPath), ".zconv-compress-")
	if err != nil {
		fail("creating output next to %s: %v", outPath, err)
	}
	defer os.Remove(tmpOut.Name())

	h := sha256.New()
	cw := &countingWriter{w: io.MultiWriter(tmpOut, h)}
	annotations := map[string]string{}
	start := time.Now()
	zw, err := compressor.ZstdCompressor(cw, annotations, level)
	if err != nil {
		fail("creating the reference compressor: %v", err)
	}
	if _, err := io.Copy(zw, in); err != nil {
		fail("compressing %s: %v", a.pos[0], err)
	}
	if err := zw.Close(); err != nil {
		fail("finishing %s: %v", a.pos[0], err)
	}
	elapsed := time.Since(start).Seconds()
	if err := tmpOut.Chmod(0o644); err != nil {
		fail("chmod %s: %v", tmpOut.Name(), err)
	}
	if err := tmpOut.Close(); err != nil {
		fail("writing %s: %v", outPath, err)
	}
	if err := os.Rename(tmpOut.Name(), outPath); err != nil {
		fail("renaming to %s: %v", outPath, err)
	}
	emit(map[string]any{
		"input":           a.pos[0],
		"output":          outPath,
		"digest":          "sha256:" + hex.EncodeToString(h.Sum(nil)),
		"size":            cw.n,
		"annotations":     annotations,
		"elapsed_seconds": elapsed,
	})
}

// ---------------------------------------------------------------------------

func main() {
	// containers/storage re-executes itself for some operations (e.g. chrootarchive).
	if reexec.Init() {
		return
	}
	if len(os.Args) < 2 {
		fail("usage: zconv-interop copy|pull|compress ...")
	}
	switch os.Args[1] {
	case "copy":
		cmdCopy(os.Args[2:])
	case "pull":
		cmdPull(os.Args[2:])
	case "compress":
		cmdCompress(os.Args[2:])
	default:
		fail("unknown subcommand %q (want copy, pull or compress)", os.Args[1])
	}
}
