//
// Parameter checking and --help for layerwise, driven by nextflow_schema.json.
// Plain Groovy (no nf-schema plugin: the pipeline must start without network access).
//
// Checks: unknown parameters (with a "did you mean" suggestion), required parameters, JSON-schema
// type / enum / pattern / minimum / maximum / exclusiveMinimum / exclusiveMaximum, and for `format: file-path|directory-path` with
// `exists: true` that the path exists. The layer-spec grammar is only matched loosely here: the
// PREFLIGHT step (layerwise/core/layers.py) is the one place that validates it against the model.
//

import groovy.json.JsonSlurper
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.util.regex.Pattern

class LayerwiseSchema {

    final Map schema
    final Map<String, Map> groups = new LinkedHashMap<>()      // group id -> group definition
    final Map<String, Map> properties = new LinkedHashMap<>()  // parameter -> property definition
    final Map<String, String> groupOf = [:]                    // parameter -> group id
    final Set<String> required = new LinkedHashSet<>()

    LayerwiseSchema(Path path) {
        this.schema = new JsonSlurper().parse(path.toFile()) as Map
        Map defs = (schema['$defs'] ?: schema['definitions'] ?: [:]) as Map
        List<String> order = (schema['allOf'] ?: []).collect { Map ref -> ref['$ref'].toString().tokenize('/').last() }
        (order + (defs.keySet() as List).findAll { !(it in order) }).each { String gid ->
            Map g = defs[gid] as Map
            if (g == null) return
            groups[gid] = g
            (g.properties as Map).each { String name, Map prop ->
                properties[name] = prop
                groupOf[name] = gid
            }
            (g.required ?: []).each { required << it.toString() }
        }
        (schema.properties ?: [:]).each { String name, Map prop -> properties[name] = prop; groupOf[name] = '' }
        (schema.required ?: []).each { required << it.toString() }
    }

    /** The parameters of one group, in schema order. */
    List<String> groupParams(String gid) {
        return ((groups[gid]?.properties ?: [:]) as Map).keySet().collect { it.toString() }
    }

    // ---------------------------------------------------------------------------------------------
    // Validation
    // ---------------------------------------------------------------------------------------------

    /** Returns [errors: [...], warnings: [...]]; each entry is one line naming the parameter. */
    Map validate(Map params) {
        List<String> errors = []
        List<String> warnings = []

        // Unknown parameters. Nextflow turns `--foo-bar` into both `foo-bar` and `fooBar`:
        // report the hyphenated spelling only.
        List<String> unknown = params.keySet().collect { it.toString() }.findAll { !properties.containsKey(it) }
        Set<String> camelOfHyphenated = unknown.findAll { it.contains('-') }.collect { camel(it) } as Set
        unknown.findAll { !(it in camelOfHyphenated) || it.contains('-') }.each { String name ->
            String hint = suggest(name)
            errors << "Unknown parameter --${name}" + (hint ? " (did you mean --${hint}?)" : '') +
                " [use --validate_params false to skip this check]"
        }

        required.each { String name ->
            def v = params[name]
            if (v instanceof Boolean)
                errors << "--${name} needs a value: ${properties[name]?.description ?: ''}".trim()
            else if (v == null || v.toString().trim().isEmpty())
                errors << "Missing required parameter --${name}: ${properties[name]?.description ?: ''}".trim()
        }

        properties.each { String name, Map prop ->
            if (!params.containsKey(name)) return
            def value = params[name]
            if (value == null) return
            if (name in required && (value instanceof Boolean || value.toString().trim().isEmpty())) return // reported above
            String err = check(name, value, prop)
            if (err) errors << err
        }
        return [errors: errors, warnings: warnings]
    }

    private String check(String name, Object value, Map prop) {
        List<String> types = prop.type instanceof List ? (prop.type as List<String>) : [prop.type?.toString() ?: 'string']
        String shown = value instanceof CharSequence ? "'${value}'" : value.toString()

        if (!types.any { typeMatches(it, value) }) {
            if (value instanceof Boolean && !types.contains('boolean'))
                return "--${name} needs a value (${typeWord(types)}), e.g. --${name} ${example(prop)}"
            return "--${name}: ${shown} is not ${typeWord(types)}"
        }
        if (value instanceof Boolean) return null

        String s = value.toString().trim()
        if (prop.enum && !(prop.enum as List).collect { it.toString() }.contains(s))
            return "--${name}: ${shown} is not one of: ${(prop.enum as List).join(', ')}"
        if (prop.pattern && !Pattern.compile(prop.pattern.toString()).matcher(s).find())
            return "--${name}: ${shown} ${prop.errorMessage ?: "does not match the pattern ${prop.pattern}"}"
        if (types.contains('integer') || types.contains('number')) {
            if (s.isNumber()) {
                BigDecimal n = s.toBigDecimal()
                if (prop.minimum != null && n < (prop.minimum as BigDecimal))
                    return "--${name}: ${s} is below the minimum ${prop.minimum}"
                if (prop.maximum != null && n > (prop.maximum as BigDecimal))
                    return "--${name}: ${s} is above the maximum ${prop.maximum}"
                if (prop.exclusiveMinimum != null && n <= (prop.exclusiveMinimum as BigDecimal))
                    return "--${name}: ${s} must be above ${prop.exclusiveMinimum}"
                if (prop.exclusiveMaximum != null && n >= (prop.exclusiveMaximum as BigDecimal))
                    return "--${name}: ${s} must be below ${prop.exclusiveMaximum}"
            }
        }
        if (prop.exists && prop.format in ['file-path', 'directory-path', 'path'] && !isRemote(s)) {
            Path p = Paths.get(s.replaceFirst(/^~(?=\/|$)/, System.getProperty('user.home')))
            if (!Files.exists(p))
                return "--${name}: ${prop.format == 'directory-path' ? 'directory' : 'file'} not found: ${s}"
            if (prop.format == 'file-path' && Files.isDirectory(p))
                return "--${name}: expected a file but found a directory: ${s}"
            if (prop.format == 'directory-path' && !Files.isDirectory(p))
                return "--${name}: expected a directory but found a file: ${s}"
        }
        return null
    }

    private static boolean typeMatches(String type, Object v) {
        switch (type) {
            case 'string':  return v instanceof CharSequence || v instanceof Number || v instanceof Path
            case 'integer': return v instanceof Integer || v instanceof Long || v instanceof BigInteger ||
                                   (v instanceof CharSequence && v.toString().trim() ==~ /-?\d+/)
            case 'number':  return v instanceof Number || (v instanceof CharSequence && v.toString().trim().isNumber())
            case 'boolean': return v instanceof Boolean
            case 'null':    return v == null
            default:        return true
        }
    }

    private static String typeWord(List<String> types) {
        types.collect { [string: 'a string', integer: 'an integer', number: 'a number', boolean: 'true or false'][it] ?: it }.join(' or ')
    }

    private static String example(Map prop) {
        if (prop.enum) return (prop.enum as List).first().toString()
        if (prop.default != null && !(prop.default instanceof Boolean)) return prop.default.toString()
        return '<value>'
    }

    private static boolean isRemote(String s) { s ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/ }

    private static String camel(String s) { s.replaceAll(/-(\w)/) { all, c -> c.toUpperCase() } }

    private static String norm(String s) { s.toLowerCase().replaceAll(/[-_.]/, '') }

    /** Closest known parameter name, or null. */
    String suggest(String name) {
        String n = norm(name)
        String exact = properties.keySet().find { norm(it) == n }
        if (exact) return exact
        def scored = properties.keySet().collect { [it, levenshtein(n, norm(it))] }.sort { it[1] }
        if (!scored) return null
        def best = scored.first()
        int tolerance = Math.max(2, (int) (n.length() / 4))
        return best[1] <= tolerance ? best[0] : null
    }

    static int levenshtein(String a, String b) {
        int[] prev = (0..b.length()) as int[]
        for (int i = 1; i <= a.length(); i++) {
            int[] cur = new int[b.length() + 1]
            cur[0] = i
            for (int j = 1; j <= b.length(); j++) {
                int cost = a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1
                cur[j] = Math.min(Math.min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + cost)
            }
            prev = cur
        }
        return prev[b.length()]
    }

    // ---------------------------------------------------------------------------------------------
    // Help and parameter summary
    // ---------------------------------------------------------------------------------------------

    /** Full help (all = also hidden parameters), or the detailed help of one parameter. */
    String help(Map params, String command, boolean monochrome, Object which = true) {
        Map c = colours(monochrome)
        StringBuilder out = new StringBuilder()
        if (which instanceof CharSequence && which.toString()) {
            String name = which.toString().replaceFirst(/^--/, '')
            Map prop = properties[name]
            if (prop == null) {
                String hint = suggest(name)
                return "Unknown parameter --${name}" + (hint ? " (did you mean --${hint}?)" : '')
            }
            out << "${c.bold}--${name}${c.reset}\n"
            out << "    ${'type'.padRight(12)}: ${prop.type instanceof List ? (prop.type as List).join('|') : prop.type}\n"
            if (prop.description) out << "    ${'description'.padRight(12)}: ${prop.description}\n"
            if (prop.help_text)   out << "    ${'help'.padRight(12)}: ${prop.help_text}\n"
            if (prop.enum)        out << "    ${'options'.padRight(12)}: ${(prop.enum as List).join(', ')}\n"
            if (prop.pattern)     out << "    ${'pattern'.padRight(12)}: ${prop.pattern}\n"
            if (prop.minimum != null) out << "    ${'minimum'.padRight(12)}: ${prop.minimum}\n"
            out << "    ${'default'.padRight(12)}: ${fmt(params[name])}\n"
            if (name in required) out << "    ${'required'.padRight(12)}: yes\n"
            return out.toString()
        }
        out << "${c.bold}Usage:${c.reset}\n  ${command}\n\n"
        int width = properties.keySet().collect { it.length() }.max() + 4
        groups.each { String gid, Map g ->
            List<String> names = (g.properties as Map).keySet().findAll { !properties[it].hidden } as List<String>
            if (!names) return
            out << "${c.underline}${c.bold}${g.title}${c.reset}\n"
            names.each { String name ->
                Map prop = properties[name]
                String type = prop.type instanceof List ? (prop.type as List).join('|') : prop.type
                String dflt = params[name] != null && params[name] != '' ? " ${c.dim}[default: ${fmt(params[name])}]${c.reset}" : ''
                String req = name in required ? " ${c.yellow}(required)${c.reset}" : ''
                String opts = prop.enum ? " ${c.dim}(${(prop.enum as List).join('|')})${c.reset}" : ''
                out << "  ${c.cyan}${('--' + name).padRight(width)}${c.reset}${c.dim}[${type}]${c.reset} ${prop.description ?: ''}${opts}${req}${dflt}\n"
            }
            out << '\n'
        }
        List<String> hidden = properties.findAll { it.value.hidden }.keySet() as List<String>
        if (hidden) out << "${c.dim}Also: ${hidden.collect { '--' + it }.join(', ')}.\n"
        out << "Run with --help <parameter> for details on one parameter, e.g. --help layer_groups.${c.reset}\n"
        return out.toString()
    }

    /** Groups of "name: value" lines for the parameters that are set (hidden ones only if not default). */
    String summary(Map params, boolean monochrome, List<String> skipGroups = []) {
        Map c = colours(monochrome)
        StringBuilder out = new StringBuilder()
        int width = properties.keySet().collect { it.length() }.max() + 2
        groups.each { String gid, Map g ->
            if (gid in skipGroups) return
            List<String> lines = []
            (g.properties as Map).keySet().each { String name ->
                Map prop = properties[name]
                def v = params[name]
                if (v == null || v == '' || name == 'help') return
                if (prop.hidden && prop.default != null && v.toString() == prop.default.toString()) return
                lines << "  ${c.cyan}${name.padRight(width)}${c.reset}: ${fmt(v)}"
            }
            if (lines) out << "${c.bold}${g.title}${c.reset}\n" << lines.join('\n') << '\n'
        }
        return out.toString()
    }

    private static String fmt(Object v) { v instanceof CharSequence ? v.toString() : String.valueOf(v) }

    static Map colours(boolean monochrome) {
        def codes = [reset: '\033[0m', bold: '\033[1m', dim: '\033[2m', underline: '\033[4m',
                     red: '\033[0;31m', green: '\033[0;32m', yellow: '\033[0;33m', cyan: '\033[0;36m', purple: '\033[0;35m']
        return monochrome ? codes.collectEntries { k, v -> [k, ''] } : codes
    }
}
