/*
 * Checks the nf-test specs without nf-test (which no registry reachable here publishes):
 *   java -cp 'nextflow-runtime/lib/*' groovy.ui.GroovyMain tests/nf_test_parse.groovy [ROOT]
 *
 * For every *.nf.test under ROOT (default: the current directory) and nf-test.config:
 *   1. compiles it as a Groovy script (syntax only; nothing is run);
 *   2. checks that `script "..."` names a file that exists (relative to the spec), and that
 *      `process "NAME"` / `workflow "NAME"` is defined in that file; same for setup `run(...)` blocks.
 * Prints one line per file and exits 1 if any file fails.
 */

import org.codehaus.groovy.control.CompilationFailedException
import org.codehaus.groovy.control.CompilerConfiguration

import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths

Path root = Paths.get(args ? args[0] : '.').toAbsolutePath().normalize()
List<String> skip = ['.git', '.nf-test', '.venv', 'work', 'nextflow-runtime', 'node_modules', 'results']

List<Path> specs = []
Files.walk(root).withCloseable { stream ->
    stream.filter { Path p ->
        Files.isRegularFile(p) &&
            (p.fileName.toString().endsWith('.nf.test') || (p.parent == root && p.fileName.toString() == 'nf-test.config')) &&
            !root.relativize(p).iterator().collect { it.toString() }.any { it in skip }
    }.forEach { specs << it }
}
specs.sort()

if (!specs) {
    System.err.println("nf_test_parse: no *.nf.test files under ${root}")
    System.exit(1)
}

int failures = 0
specs.each { Path spec ->
    String rel = root.relativize(spec).toString()
    List<String> problems = []
    String text = spec.text

    // 1. Groovy syntax
    try {
        def cc = new CompilerConfiguration()
        cc.setTolerance(0)
        new GroovyShell(this.class.classLoader, new Binding(), cc).parse(text, spec.fileName.toString().replaceAll(/[^A-Za-z0-9_]/, '_'))
    } catch (CompilationFailedException e) {
        problems << ('syntax: ' + e.message.readLines().findAll { it.trim() }.take(4).join(' | '))
    }

    // 2. Referenced scripts and their processes / workflows
    if (rel.endsWith('.nf.test')) {
        def scriptRefs = (text =~ /(?m)^\s*script\s+["']([^"']+)["']/).collect { it[1] }
        def procRefs = (text =~ /(?m)^\s*(process|workflow)\s+["']([^"']+)["']/).collect { [it[1], it[2]] }
        def runRefs = (text =~ /run\(\s*["']([A-Z0-9_]+)["']\s*\)/).collect { it[1] }
        if (!scriptRefs) problems << 'no `script "..."` line'
        Map<String, String> defined = [:]   // name -> kind, over all referenced scripts
        scriptRefs.each { String ref ->
            Path target = spec.parent.resolve(ref).normalize()
            if (!Files.isRegularFile(target)) {
                problems << "script not found: ${ref}"
            } else {
                (target.text =~ /(?m)^\s*(process|workflow)\s+([A-Za-z0-9_]+)\s*\{/).each { defined[it[2]] = it[1] }
            }
        }
        procRefs.each { kind, name ->
            if (defined[name] != kind) problems << "${kind} ${name} is not defined in ${scriptRefs.join(', ')}"
        }
        runRefs.each { name ->
            if (!defined.containsKey(name)) problems << "setup run(\"${name}\") is not defined in ${scriptRefs.join(', ')}"
        }
        if (!(text =~ /\b(nextflow_process|nextflow_workflow|nextflow_pipeline|nextflow_function)\s*\{/))
            problems << 'no nextflow_process / nextflow_workflow / nextflow_pipeline / nextflow_function block'
        if (!(text =~ /\btest\s*\(/)) problems << 'no test(...) block'
    }

    if (problems) {
        failures++
        println "FAIL ${rel}"
        problems.each { println "     ${it}" }
    } else {
        println "ok   ${rel}"
    }
}

println "${specs.size() - failures}/${specs.size()} nf-test files parse"
System.exit(failures ? 1 : 0)
