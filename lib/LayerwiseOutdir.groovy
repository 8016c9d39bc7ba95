//
// The --outdir contract, head side: one run at a time writes into an outdir (a lock taken before any
// task is submitted), its metadata says "incomplete" until PUBLISH_RESULTS has verified a full
// result, and a published file damaged since the last run makes -resume recompute its unit.
// The Python side (layerwise/publish/outdir.py) checks the lock and does the publishing. The names of
// the protocol's files (lock, metadata, superseded folder, ...) are read from layerwise/core/outdir.json,
// the one place both sides take them from: call init(projectDir) first.
//

import groovy.json.JsonOutput
import groovy.json.JsonSlurper
import java.nio.file.FileAlreadyExistsException
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.StandardCopyOption

class LayerwiseOutdir {

    static final String PROTOCOL_FILE = 'layerwise/core/outdir.json'
    private static Map names = null

    /** Read the protocol's names from <projectDir>/layerwise/core/outdir.json. */
    static void init(Path projectDir) {
        names = new JsonSlurper().parse(projectDir.resolve(PROTOCOL_FILE).toFile()) as Map
    }

    static String name(String key) {
        if (names == null) throw new IllegalStateException("LayerwiseOutdir.init(projectDir) was not called")
        String v = names[key]
        if (!v) throw new IllegalStateException("${PROTOCOL_FILE} has no '${key}'")
        return v
    }

    /** Who this Nextflow head is: what the lock records. */
    static Map owner(String session, String runName) {
        [session: session, run_name: runName, pid: ProcessHandle.current().pid(),
         host: InetAddress.getLocalHost().getHostName(), started: new Date().format("yyyy-MM-dd'T'HH:mm:ss")]
    }

    /** Take the outdir lock or explain who holds it. Returns null on success, else the error text. */
    static String lock(Path outdir, Map owner) {
        Files.createDirectories(outdir)
        Path lock = outdir.resolve(name('lock_file'))
        for (int attempt = 0; attempt < 2; attempt++) {
            try {
                Files.createFile(lock)
                lock.text = JsonOutput.toJson(owner)
                return null
            } catch (FileAlreadyExistsException ignored) {
                Map held
                try { held = new JsonSlurper().parse(lock.toFile()) as Map } catch (Exception e) { held = [:] }
                boolean sameHost = held.host == owner.host
                boolean alive = sameHost && held.pid && ProcessHandle.of(held.pid as long).map { it.isAlive() }.orElse(false)
                if (sameHost && !alive) {
                    Files.deleteIfExists(lock)     // its owner died (killed head): take over
                    continue
                }
                return "--outdir ${outdir} is in use by another layerwise run (${held.run_name ?: '?'}, pid ${held.pid ?: '?'} on " +
                    "${held.host ?: '?'}, since ${held.started ?: '?'}): two runs would mix their files. Wait for it, use another " +
                    "--outdir, or, if no run is active (e.g. its head was killed on another machine), delete ${lock}."
            }
        }
        return "--outdir ${outdir}: could not take the lock ${lock}"
    }

    /** Release the lock if it is ours (`session` and `pid` match). */
    static void unlock(Path outdir, Map owner) {
        try {
            Path lock = outdir.resolve(name('lock_file'))
            if (!Files.exists(lock)) return
            Map held = new JsonSlurper().parse(lock.toFile()) as Map
            if (held.session == owner.session && (held.pid as long) == (owner.pid as long)) Files.deleteIfExists(lock)
        } catch (Exception ignored) { }
    }

    /**
     * Before any task: a file the last finished run published (hard-linked from the task that wrote
     * it) that has since been damaged in place (size or mtime changed) shares its bytes with its work
     * copy, so the work copy is damaged too: remove that unit's output folder, so that -resume
     * re-runs the unit instead of reusing it. Then mark the outdir incomplete. Returns log lines.
     */
    static List<String> prepare(Path outdir, String runName) {
        List<String> notes = []
        Path meta = outdir.resolve(name('metadata'))
        Map old = null
        if (Files.isRegularFile(meta)) {
            try { old = new JsonSlurper().parse(meta.toFile()) as Map } catch (Exception ignored) { }
        }
        if (old && old.status != name('status_incomplete')) {
            (old.published ?: []).each { Map rec ->
                if (!(rec.how in ['linked', 'kept']) || !rec.source_dirs) return
                Path f = outdir.resolve(rec.path.toString())
                if (!Files.isRegularFile(f)) return        // deleted: PUBLISH re-links the intact work copy
                boolean changed = Files.size(f) != (rec.bytes as long) ||
                    (rec.mtime_ns != null && Files.getLastModifiedTime(f).toInstant().with { it.epochSecond * 1_000_000_000L + it.nano } != (rec.mtime_ns as long))
                if (!changed) return
                (rec.source_dirs as List).each { String d ->
                    Path src = java.nio.file.Paths.get(d).resolve(f.fileName.toString())
                    if (Files.exists(src) && Files.isSameFile(src, f)) {
                        src.parent.toFile().deleteDir()
                        notes << "${rec.path} was changed since it was published; its work copy (the same file) is removed so that its unit is extracted again".toString()
                    }
                }
            }
            Files.createDirectories(outdir.resolve(name('previous_metadata')).parent)
            Files.copy(meta, outdir.resolve(name('previous_metadata')), StandardCopyOption.REPLACE_EXISTING)
        }
        Path tmp = outdir.resolve(".${name('metadata')}.tmp")
        tmp.text = JsonOutput.prettyPrint(JsonOutput.toJson([
            status: name('status_incomplete'), run_name: runName, since: new Date().format("yyyy-MM-dd'T'HH:mm:ss"),
            reason: 'a run is writing into this folder, or one stopped before publishing a verified result',
        ])) + '\n'
        Files.move(tmp, meta, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE)
        return notes
    }

    /**
     * Move earlier runs' summaries that this run will write again (e.g. analysis/, sae/metrics.parquet)
     * to superseded/<time>/: until this run writes them, their absence says the stage is not complete,
     * and they are never mixed with this run's inputs. Returns one note per path moved.
     */
    static List<String> supersede(Path outdir, List<String> paths, String stamp) {
        List<String> notes = []
        paths.each { String rel ->
            Path src = outdir.resolve(rel)
            if (!Files.exists(src)) return
            Path dest = outdir.resolve(name('superseded_dir')).resolve(stamp).resolve(rel)
            Files.createDirectories(dest.parent)
            Files.move(src, dest, StandardCopyOption.ATOMIC_MOVE)
            notes << "${rel} of an earlier run moved to ${name('superseded_dir')}/${stamp}/ (this run writes it again)".toString()
        }
        return notes
    }

    /**
     * At the end of a run: superseded copies (superseded/<stamp>/<path>) identical to what this run published
     * again at <path> (a cached analysis republished, the same SAE metrics) are removed, so that -resume does
     * not pile up copies of unchanged results. Returns the paths whose copy was removed.
     */
    static List<String> dropUnchanged(Path outdir, String stamp, List<String> paths) {
        List<String> dropped = []
        Path base = outdir.resolve(name('superseded_dir')).resolve(stamp)
        paths.each { String rel ->
            Path old = base.resolve(rel)
            Path now = outdir.resolve(rel)
            if (Files.exists(old) && Files.exists(now) && sameTree(old, now)) {
                if (Files.isDirectory(old)) old.toFile().deleteDir() else Files.delete(old)
                dropped << rel
            }
        }
        // empty folders left behind, up to and including superseded/<stamp>
        for (Path p = base; Files.isDirectory(base) && p != null; ) {
            List<Path> empty = []
            Files.walk(base).withCloseable { st -> st.filter { Files.isDirectory(it) }.forEach { empty << it } }
            empty = empty.findAll { d -> Files.list(d).withCloseable { it.count() } == 0 }.sort { -it.nameCount }
            if (!empty) break
            empty.each { Files.deleteIfExists(it) }
            if (!Files.exists(base)) break
        }
        return dropped
    }

    /** Same files (same relative paths, each the same inode or the same bytes). */
    static boolean sameTree(Path a, Path b) {
        if (Files.isRegularFile(a) || Files.isRegularFile(b)) {
            if (!(Files.isRegularFile(a) && Files.isRegularFile(b))) return false
            return Files.isSameFile(a, b) || (Files.size(a) == Files.size(b) && Files.mismatch(a, b) == -1L)
        }
        def files = { Path root ->
            List<String> out = []
            Files.walk(root).withCloseable { st -> st.filter { Files.isRegularFile(it) }.forEach { out << root.relativize(it).toString() } }
            out.sort()
        }
        List<String> fa = files(a)
        if (fa != files(b)) return false
        return fa.every { String rel -> sameTree(a.resolve(rel), b.resolve(rel)) }
    }
}
